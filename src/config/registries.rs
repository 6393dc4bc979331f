//! The service registries' parameters — Consul, etcd, Docker — as the configuration
//! holds them, with the defaults a source uses when a key is left out.

use std::path::PathBuf;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::address::{split_host_port, HostPort};
use super::{secrets, ClientTlsFiles, JsonPath};

/// Consul's HTTP port, used when `host` has none.
pub const CONSUL_DEFAULT_PORT: u16 = 8500;

/// How long Consul may hold a blocking query, unless configured.
pub const CONSUL_DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The request bound used when `timeout` is zero (GoBetween's for Consul): no read may wait
/// without end.
pub const CONSUL_DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to ask Consul; the names follow GoBetween's `consul_*` keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsulParams {
    /// `consul_host`: the agent, `host:port` or `host` (port 8500).
    #[serde(rename = "consul_host")]
    pub host: ConsulAgent,
    /// `consul_service_name`.
    #[serde(rename = "consul_service_name")]
    pub service_name: String,
    /// `consul_service_tag`: only instances with this tag.
    #[serde(rename = "consul_service_tag", skip_serializing_if = "Option::is_none")]
    pub service_tag: Option<String>,
    /// `consul_service_passing_only`: only instances whose checks all pass.
    #[serde(rename = "consul_service_passing_only")]
    pub passing_only: bool,
    /// `consul_datacenter`: another datacenter than the agent's.
    #[serde(rename = "consul_datacenter", skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// `consul_auth_username` and `consul_auth_password`: HTTP basic authentication,
    /// sent when the username is set.
    #[serde(
        rename = "consul_auth_username",
        skip_serializing_if = "Option::is_none"
    )]
    pub auth_username: Option<String>,
    #[serde(
        rename = "consul_auth_password",
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub auth_password: Option<String>,
    /// `consul_token`: the ACL token, sent as `X-Consul-Token`.
    #[serde(
        rename = "consul_token",
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub acl_token: Option<String>,
    /// `consul_tls_enabled` with `consul_tls_cert_path`, `consul_tls_key_path`,
    /// `consul_tls_cacert_path`: HTTPS when `Some`.
    #[serde(flatten, serialize_with = "consul_tls")]
    pub tls: Option<ClientTlsFiles>,
    /// How long Consul may hold a blocking query (it adds up to a sixteenth as jitter).
    /// Capped at the source's `MAX_WAIT`, so a held request ends before the runner's
    /// `WATCH_LIMIT` calls it hung. Zero turns blocking off: every
    /// fetch answers at once and the source is polled.
    #[serde(skip)]
    pub wait: Duration,
    /// Connecting and answering, on top of `wait` for a blocking query. Zero means [`CONSUL_DEFAULT_TIMEOUT`].
    #[serde(skip)]
    pub timeout: Duration,
}

impl ConsulParams {
    /// Every instance of `service_name` on the agent at `host`, with default waits.
    pub fn new(host: ConsulAgent, service_name: impl Into<String>) -> Self {
        ConsulParams {
            host,
            service_name: service_name.into(),
            service_tag: None,
            passing_only: false,
            datacenter: None,
            auth_username: None,
            auth_password: None,
            acl_token: None,
            tls: None,
            wait: CONSUL_DEFAULT_WAIT,
            timeout: CONSUL_DEFAULT_TIMEOUT,
        }
    }
}

/// etcd's client port, used when an endpoint has none.
pub const ETCD_DEFAULT_PORT: u16 = 2379;

/// How long one fetch waits for a change, unless configured.
pub const ETCD_DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The request bound used when `timeout` is zero (as for Consul): no read may wait
/// without end.
pub const ETCD_DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to ask etcd; the names follow GoBetween's `etcd_*` keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EtcdParams {
    /// `etcd_endpoints`: client URLs, `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT`;
    /// tried in turn, the next one after an error.
    #[serde(rename = "etcd_endpoints", serialize_with = "secrets::secret_urls")]
    pub endpoints: Vec<EtcdEndpoint>,
    /// `etcd_prefix`: every key starting with it is a backend (empty: every key).
    #[serde(rename = "etcd_prefix")]
    pub prefix: String,
    /// `etcd_username` and `etcd_password`: etcd authentication, when the username is set.
    #[serde(rename = "etcd_username", skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(
        rename = "etcd_password",
        skip_serializing_if = "Option::is_none",
        serialize_with = "secrets::optional_secret"
    )]
    pub password: Option<String>,
    /// `etcd_tls_enabled` with `etcd_tls_cert_path`, `etcd_tls_key_path`,
    /// `etcd_tls_cacert_path`: HTTPS to every endpoint when `Some` (an `https://`
    /// endpoint alone uses the system's trust store).
    #[serde(flatten, serialize_with = "etcd_tls")]
    pub tls: Option<ClientTlsFiles>,
    /// `etcd_dsn_json_path`: where a JSON value holds the backend's URL.
    #[serde(rename = "etcd_dsn_json_path", skip_serializing_if = "Option::is_none")]
    pub dsn_json_path: Option<JsonPath>,
    /// How long one fetch waits for a change before listing again anyway; capped at
    /// the source's `MAX_WAIT`, below the runner's `WATCH_LIMIT`. Zero turns
    /// watching off: every fetch lists at once and the source is polled.
    #[serde(skip)]
    pub wait: Duration,
    /// Connecting and answering, for each request. Zero means [`ETCD_DEFAULT_TIMEOUT`].
    #[serde(skip)]
    pub timeout: Duration,
}

impl EtcdParams {
    /// Every key under `prefix` on the etcd at `endpoint`, with default waits.
    pub fn new(endpoint: EtcdEndpoint, prefix: impl Into<String>) -> Self {
        EtcdParams {
            endpoints: vec![endpoint],
            prefix: prefix.into(),
            username: None,
            password: None,
            tls: None,
            dsn_json_path: None,
            wait: ETCD_DEFAULT_WAIT,
            timeout: ETCD_DEFAULT_TIMEOUT,
        }
    }
}

/// The daemon's socket on a default installation.
pub const DOCKER_DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// The request bound used when `timeout` is zero (GoBetween's for Docker): no read may wait
/// without end.
pub const DOCKER_DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to ask Docker; the names follow GoBetween's `docker_*` keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DockerParams {
    /// `docker_endpoint`: `unix:///PATH` or `tcp://HOST:PORT` (`http://` and
    /// `https://` are accepted as well; the port defaults to 2375, or 2376 with TLS).
    #[serde(rename = "docker_endpoint", serialize_with = "secrets::secret_url")]
    pub endpoint: DockerUrl,
    /// `docker_container_label`: only containers with this label, `KEY` or `KEY=VALUE`.
    #[serde(
        rename = "docker_container_label",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_label: Option<String>,
    /// `docker_container_private_port`: the port inside the container.
    #[serde(rename = "docker_container_private_port")]
    pub container_private_port: u16,
    /// `docker_container_host_env_var`: a container environment variable holding the
    /// host to reach it at.
    #[serde(
        rename = "docker_container_host_env_var",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_host_env_var: Option<String>,
    /// `docker_tls_enabled` with `docker_tls_cert_path`, `docker_tls_key_path`,
    /// `docker_tls_cacert_path`: HTTPS to a TCP endpoint when `Some`.
    #[serde(flatten, serialize_with = "docker_tls")]
    pub tls: Option<ClientTlsFiles>,
    /// For the whole listing, inspections included. Zero means [`DOCKER_DEFAULT_TIMEOUT`].
    #[serde(skip)]
    pub timeout: Duration,
}

impl DockerParams {
    /// Containers on the local daemon publishing `private_port`.
    pub fn new(private_port: u16) -> Self {
        DockerParams {
            endpoint: DockerUrl::local(),
            container_label: None,
            container_private_port: private_port,
            container_host_env_var: None,
            tls: None,
            timeout: DOCKER_DEFAULT_TIMEOUT,
        }
    }
}

/// `consul_host`: the agent's `host:port`, the port 8500 when left out; shown as written.
#[derive(Clone, Debug)]
pub struct ConsulAgent {
    text: String,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl ConsulAgent {
    pub fn parse(text: &str) -> Result<ConsulAgent, String> {
        if text.contains("://") {
            return Err(format!(
                "\"{text}\" is a URL; expected host[:port] (HTTPS is consul_tls_enabled)"
            ));
        }
        let (host, port) = split_host_port(text, Some(CONSUL_DEFAULT_PORT))?;
        Ok(ConsulAgent {
            text: text.to_owned(),
            host,
            port,
        })
    }
}

shown_as_written!(ConsulAgent, text);

/// An `etcd_endpoints` entry, `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT`
/// (port 2379): whether it is HTTPS, its host and its port; shown as written.
#[derive(Clone, Debug)]
pub struct EtcdEndpoint {
    text: String,
    pub https: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl EtcdEndpoint {
    pub fn parse(text: &str) -> Result<EtcdEndpoint, String> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else if text.contains("://") {
            return Err(format!("\"{text}\" is not http:// or https://"));
        } else {
            (false, text)
        };
        let (host, port) = split_host_port(rest.trim_end_matches('/'), Some(ETCD_DEFAULT_PORT))?;
        Ok(EtcdEndpoint {
            text: text.to_owned(),
            https,
            host,
            port,
        })
    }
}

shown_as_written!(EtcdEndpoint, text);

/// Where a `docker_endpoint` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// `unix:///PATH`.
    Unix(PathBuf),
    /// `tcp://`, `http://` or `https://`; `tls_wanted` when HTTPS was asked for, by the
    /// scheme or by TLS files.
    Tcp {
        host: String,
        port: u16,
        tls_wanted: bool,
    },
}

/// A `docker_endpoint` as written: `unix:///PATH`, or `tcp://`, `http://` or
/// `https://HOST[:PORT]`; shown and compared as written. Whether TLS is used (and so the
/// default port) also depends on whether TLS files are configured: [`DockerUrl::endpoint`].
#[derive(Clone, Debug)]
pub struct DockerUrl {
    text: String,
    target: DockerTarget,
}

#[derive(Clone, Debug)]
enum DockerTarget {
    Unix(PathBuf),
    Tcp {
        host: String,
        /// `None`: 2375, or 2376 with TLS.
        port: Option<u16>,
        https: bool,
    },
}

impl DockerUrl {
    pub fn parse(text: &str) -> Result<DockerUrl, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("\"{text}\" is not unix:///PATH or tcp://HOST:PORT"))?;
        let target = match scheme {
            "unix" if rest.is_empty() => return Err("the socket path is empty".into()),
            "unix" => DockerTarget::Unix(PathBuf::from(rest)),
            "tcp" | "http" | "https" => {
                let authority = rest.trim_end_matches('/');
                let given = match HostPort::split(authority) {
                    HostPort::Plain { port, .. } | HostPort::Bracketed { port, .. } => {
                        port.is_some()
                    }
                    HostPort::Colons | HostPort::Unclosed => false,
                };
                // The default stands in only to check the rest; it is chosen at start.
                let (host, port) = split_host_port(authority, Some(2375))?;
                DockerTarget::Tcp {
                    host,
                    port: given.then_some(port),
                    https: scheme == "https",
                }
            }
            other => {
                return Err(format!(
                    "unknown scheme \"{other}\"; expected unix:// or tcp://"
                ))
            }
        };
        Ok(DockerUrl {
            text: text.to_owned(),
            target,
        })
    }

    /// The daemon's socket on a default installation, [`DOCKER_DEFAULT_ENDPOINT`].
    pub fn local() -> DockerUrl {
        DockerUrl {
            text: DOCKER_DEFAULT_ENDPOINT.to_owned(),
            target: DockerTarget::Unix(PathBuf::from(
                DOCKER_DEFAULT_ENDPOINT.trim_start_matches("unix://"),
            )),
        }
    }

    /// Where to connect; `tls` says whether TLS files are configured.
    pub fn endpoint(&self, tls: bool) -> Result<DockerEndpoint, String> {
        match &self.target {
            DockerTarget::Unix(_) if tls => Err("TLS needs a tcp:// endpoint".into()),
            DockerTarget::Unix(path) => Ok(DockerEndpoint::Unix(path.clone())),
            DockerTarget::Tcp { host, port, https } => {
                let tls_wanted = tls || *https;
                let default_port = if tls_wanted { 2376 } else { 2375 };
                Ok(DockerEndpoint::Tcp {
                    host: host.clone(),
                    port: port.unwrap_or(default_port),
                    tls_wanted,
                })
            }
        }
    }
}

shown_as_written!(DockerUrl, text);

/// `consul_tls_*`, as [`prefixed_tls`].
fn consul_tls<S: Serializer>(
    tls: &Option<ClientTlsFiles>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    prefixed_tls("consul", tls.as_ref(), serializer)
}

/// `etcd_tls_*`, as [`prefixed_tls`].
fn etcd_tls<S: Serializer>(tls: &Option<ClientTlsFiles>, serializer: S) -> Result<S::Ok, S::Error> {
    prefixed_tls("etcd", tls.as_ref(), serializer)
}

/// `docker_tls_*`, as [`prefixed_tls`].
fn docker_tls<S: Serializer>(
    tls: &Option<ClientTlsFiles>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    prefixed_tls("docker", tls.as_ref(), serializer)
}

/// `PREFIX_tls_enabled` and the paths set, the keys the reader reads: one set
/// of names behind each registry's prefix, so they are written from the prefix as they
/// are read (nothing when TLS is off).
fn prefixed_tls<S: Serializer>(
    prefix: &str,
    tls: Option<&ClientTlsFiles>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(None)?;
    if let Some(tls) = tls {
        map.serialize_entry(&format!("{prefix}_tls_enabled"), &true)?;
        for (what, path) in [
            ("cert", &tls.cert_path),
            ("key", &tls.key_path),
            ("cacert", &tls.cacert_path),
        ] {
            if let Some(path) = path {
                let key = format!("{prefix}_tls_{what}_path");
                map.serialize_entry(&key, &path.display().to_string())?;
            }
        }
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_once_and_shown_as_written() {
        let agent = ConsulAgent::parse("[::1]").expect("agent");
        assert_eq!(
            (agent.host.as_str(), agent.port),
            ("::1", CONSUL_DEFAULT_PORT)
        );
        assert_eq!(agent.to_string(), "[::1]");
        let etcd = EtcdEndpoint::parse("https://etcd:2380/").expect("endpoint");
        assert_eq!(
            (etcd.https, etcd.host.as_str(), etcd.port),
            (true, "etcd", 2380)
        );
        assert_eq!(etcd.to_string(), "https://etcd:2380/");
        assert!(EtcdEndpoint::parse("unix:///x").is_err());
    }

    #[test]
    fn a_docker_endpoint_takes_its_default_port_from_tls() {
        let tcp = DockerUrl::parse("tcp://d").expect("url");
        let port = |url: &DockerUrl, tls| match url.endpoint(tls) {
            Ok(DockerEndpoint::Tcp {
                port, tls_wanted, ..
            }) => (port, tls_wanted),
            other => panic!("{other:?}"),
        };
        assert_eq!(port(&tcp, false), (2375, false));
        assert_eq!(port(&tcp, true), (2376, true));
        let https = DockerUrl::parse("https://d").expect("url");
        assert_eq!(port(&https, false), (2376, true));
        assert_eq!(
            port(&DockerUrl::parse("tcp://d:9").expect("url"), true),
            (9, true)
        );
        assert_eq!(DockerUrl::local().to_string(), DOCKER_DEFAULT_ENDPOINT);
        assert!(DockerUrl::local().endpoint(true).is_err());
        for bad in ["docker.sock", "unix://", "ftp://h:1", "tcp://h:0"] {
            assert!(DockerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
