//! `[servers.NAME.discovery]`: where a server's backends come from, and the settings
//! every dynamic kind shares (`interval`, `timeout`, `failpolicy`); each serializes under
//! its keys in the file. A reader fills them from a file (GoBetween's:
//! `gobetween::discovery`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{
    secrets, write_as, ConsulParams, DockerParams, EtcdParams, JsonPath, LinePattern, Url,
};

/// A list of backends, shared by whoever holds it (`Arc::make_mut` to edit one),
/// and pointed into by the backends built from it.
pub type BackendList = crate::backend::SpecList;

fn shown_list<S: serde::Serializer>(list: &BackendList, serializer: S) -> Result<S::Ok, S::Error> {
    write_as::each_shown(list, serializer)
}

/// What `timeout = "0"` (or no `timeout`) means for a dynamic kind. GoBetween's "0"
/// waits forever, which lets one hung source freeze a server's backends for good.
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `[servers.NAME.discovery]`: `kind`, the settings every dynamic kind shares and the
/// kind's own keys, side by side.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DiscoveryConfig {
    /// `kind = "static"`: the `static_list`. Shared, not copied, by every holder of the
    /// configuration (the running one, each server's settings, its pool's rebuilder): a
    /// list can be 100 000 lines long. An edit copies it first.
    Static {
        #[serde(rename = "static_list", serialize_with = "shown_list")]
        backends: BackendList,
    },
    /// `kind = "srv"`: DNS SRV records.
    Srv {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: SrvParams,
    },
    /// `kind = "dns"`: a host name's A/AAAA records and one port.
    Dns {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: DnsParams,
    },
    /// `kind = "json"`: a JSON array fetched over HTTP(S).
    Json {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: JsonParams,
    },
    /// `kind = "plaintext"`: backend lines fetched over HTTP(S).
    Plaintext {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: PlaintextParams,
    },
    /// `kind = "exec"`: a command printing backend lines.
    Exec {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: ExecParams,
    },
    /// `kind = "file"`: a file of backend lines or JSON, re-read when it changes.
    File {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: FileParams,
    },
    /// `kind = "consul"`: the instances of a Consul service.
    Consul {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: ConsulParams,
    },
    /// `kind = "etcd"`: the keys under an etcd prefix.
    Etcd {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: EtcdParams,
    },
    /// `kind = "docker"`: containers publishing a port.
    Docker {
        #[serde(flatten)]
        common: DiscoveryCommon,
        #[serde(flatten)]
        params: DockerParams,
    },
}

impl DiscoveryConfig {
    /// A static list of no backend.
    pub fn is_empty_list(&self) -> bool {
        matches!(self, DiscoveryConfig::Static { backends } if backends.is_empty())
    }

    /// The `kind` as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryConfig::Static { .. } => "static",
            DiscoveryConfig::Srv { .. } => "srv",
            DiscoveryConfig::Dns { .. } => "dns",
            DiscoveryConfig::Json { .. } => "json",
            DiscoveryConfig::Plaintext { .. } => "plaintext",
            DiscoveryConfig::Exec { .. } => "exec",
            DiscoveryConfig::File { .. } => "file",
            DiscoveryConfig::Consul { .. } => "consul",
            DiscoveryConfig::Etcd { .. } => "etcd",
            DiscoveryConfig::Docker { .. } => "docker",
        }
    }

    /// The settings of a dynamic kind; `None` for `static`.
    pub fn common(&self) -> Option<&DiscoveryCommon> {
        match self {
            DiscoveryConfig::Static { .. } => None,
            DiscoveryConfig::Srv { common, .. }
            | DiscoveryConfig::Dns { common, .. }
            | DiscoveryConfig::Json { common, .. }
            | DiscoveryConfig::Plaintext { common, .. }
            | DiscoveryConfig::Exec { common, .. }
            | DiscoveryConfig::File { common, .. }
            | DiscoveryConfig::Consul { common, .. }
            | DiscoveryConfig::Etcd { common, .. }
            | DiscoveryConfig::Docker { common, .. } => Some(common),
        }
    }

    /// The backends of a `static` discovery; `None` for dynamic kinds.
    pub fn static_backends(&self) -> Option<&BackendList> {
        match self {
            DiscoveryConfig::Static { backends } => Some(backends),
            _ => None,
        }
    }
}

/// `interval`, `timeout` and `failpolicy`, shared by every dynamic kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiscoveryCommon {
    /// Time between fetches; zero fetches until the first success, then never again
    /// (GoBetween's meaning). `dns` refreshes by TTL and `file` polls every second; a
    /// shorter non-zero `interval` makes either look sooner.
    #[serde(serialize_with = "write_as::duration")]
    pub interval: Duration,
    /// Longest one fetch may take; never zero (see [`DEFAULT_DISCOVERY_TIMEOUT`]).
    #[serde(serialize_with = "write_as::duration")]
    pub timeout: Duration,
    pub failpolicy: FailPolicy,
}

impl Default for DiscoveryCommon {
    fn default() -> Self {
        DiscoveryCommon {
            interval: Duration::ZERO,
            timeout: DEFAULT_DISCOVERY_TIMEOUT,
            failpolicy: FailPolicy::KeepLast,
        }
    }
}

/// What a failed fetch does to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    /// Keep the last list that was fetched.
    KeepLast,
    /// Drop every backend until a fetch succeeds again.
    SetEmpty,
}

impl FailPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailPolicy::KeepLast => "keeplast",
            FailPolicy::SetEmpty => "setempty",
        }
    }
}

/// UDP or TCP towards a DNS server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProtocol {
    Udp,
    Tcp,
}

impl DnsProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsProtocol::Udp => "udp",
            DnsProtocol::Tcp => "tcp",
        }
    }
}

/// `kind = "srv"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SrvParams {
    /// `srv_lookup_server`: the DNS server asked (port 53 unless given).
    #[serde(rename = "srv_lookup_server")]
    pub server: SocketAddr,
    /// `srv_lookup_pattern`: the SRV name, e.g. `_web._tcp.example.com.`
    #[serde(rename = "srv_lookup_pattern")]
    pub pattern: String,
    /// `srv_dns_protocol`.
    #[serde(rename = "srv_dns_protocol")]
    pub protocol: DnsProtocol,
}

/// `kind = "dns"` (Sluice extension).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsParams {
    /// `dns_hostname`: whose A and AAAA records are the backends.
    #[serde(rename = "dns_hostname")]
    pub hostname: String,
    /// `dns_port`: the port of every backend.
    #[serde(rename = "dns_port")]
    pub port: u16,
    /// `dns_server`: the DNS server asked; `None` uses the system's resolver.
    #[serde(rename = "dns_server", skip_serializing_if = "Option::is_none")]
    pub server: Option<SocketAddr>,
    /// `dns_protocol`, towards `server`.
    #[serde(rename = "dns_protocol")]
    pub protocol: DnsProtocol,
}

/// `kind = "json"`: GoBetween's patterns are paths into each element of the array.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JsonParams {
    /// `json_endpoint`: an `http://` or `https://` URL.
    #[serde(rename = "json_endpoint", serialize_with = "secrets::secret_url")]
    pub endpoint: Url,
    #[serde(rename = "json_host_pattern")]
    pub host_pattern: JsonPath,
    #[serde(rename = "json_port_pattern")]
    pub port_pattern: JsonPath,
    #[serde(rename = "json_weight_pattern")]
    pub weight_pattern: JsonPath,
    #[serde(rename = "json_priority_pattern")]
    pub priority_pattern: JsonPath,
    /// `json_max_connections_pattern` (Sluice extension).
    #[serde(rename = "json_max_connections_pattern")]
    pub max_connections_pattern: JsonPath,
    /// `json_backup_pattern` (Sluice extension).
    #[serde(rename = "json_backup_pattern")]
    pub backup_pattern: JsonPath,
    /// `json_sni_pattern`; without it no SNI is read.
    #[serde(rename = "json_sni_pattern", skip_serializing_if = "Option::is_none")]
    pub sni_pattern: Option<JsonPath>,
    /// `json_tls_cacert_path` (Sluice extension): CA certificates that verify an
    /// `https://` endpoint; `None` trusts the system's store.
    #[serde(
        rename = "json_tls_cacert_path",
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_as::optional_path"
    )]
    pub cacert_path: Option<PathBuf>,
}

/// `kind = "plaintext"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlaintextParams {
    /// `plaintext_endpoint`: an `http://` or `https://` URL.
    #[serde(rename = "plaintext_endpoint", serialize_with = "secrets::secret_url")]
    pub endpoint: Url,
    /// `plaintext_regex_pattern`: a regex with named groups `host`, `port` and optional
    /// `weight`, `priority`, `max_connections`, `sni`, `backup`; without it lines are read
    /// in the backend line grammar.
    #[serde(
        rename = "plaintext_regex_pattern",
        skip_serializing_if = "Option::is_none"
    )]
    pub pattern: Option<LinePattern>,
    /// `plaintext_tls_cacert_path` (Sluice extension), as for `json`.
    #[serde(
        rename = "plaintext_tls_cacert_path",
        skip_serializing_if = "Option::is_none",
        serialize_with = "write_as::optional_path"
    )]
    pub cacert_path: Option<PathBuf>,
}

/// `kind = "exec"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecParams {
    /// `exec_command`: the program and its arguments (no shell). A program given as a
    /// relative path with a `/` is already taken from the configuration's directory; a
    /// bare name is looked up in `PATH`; arguments are as written.
    #[serde(rename = "exec_command")]
    pub command: Vec<String>,
}

/// `kind = "file"` (Sluice extension).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileParams {
    /// `file_path`.
    #[serde(rename = "file_path", serialize_with = "write_as::path")]
    pub path: PathBuf,
}

/// GoBetween's defaults for the JSON patterns, then Sluice's for its own fields.
pub(crate) const JSON_DEFAULT_PATTERNS: [(&str, &str); 6] = [
    ("json_host_pattern", "host"),
    ("json_port_pattern", "port"),
    ("json_weight_pattern", "weight"),
    ("json_priority_pattern", "priority"),
    ("json_max_connections_pattern", "max_connections"),
    ("json_backup_pattern", "backup"),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::dump::{self, Secrets, REDACTED};

    fn discovery_of(section: &str) -> DiscoveryConfig {
        let text = format!("[servers.a]\nbind = \":1\"\n[servers.a.discovery]\n{section}\n");
        let loaded =
            crate::config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        loaded.config.servers["a"].discovery.clone()
    }

    #[test]
    fn defaults_of_dynamic_kinds() {
        let d = discovery_of("kind = \"file\"\nfile_path = \"/x\"\ntimeout = \"0\"");
        assert_eq!(d.common(), Some(&DiscoveryCommon::default()));
        assert_eq!(
            DiscoveryCommon::default().timeout,
            DEFAULT_DISCOVERY_TIMEOUT
        );
        let DiscoveryConfig::Json { params, .. } =
            discovery_of("kind = \"json\"\njson_endpoint = \"http://h/\"")
        else {
            panic!("json");
        };
        assert_eq!(
            (params.host_pattern.as_str(), params.port_pattern.as_str()),
            ("host", "port")
        );
        assert_eq!(params.sni_pattern, None);
        assert_eq!(
            (
                params.max_connections_pattern.as_str(),
                params.backup_pattern.as_str()
            ),
            ("max_connections", "backup")
        );
        assert_eq!(params.cacert_path, None);
        let DiscoveryConfig::Srv { params, .. } = discovery_of(
            "kind = \"srv\"\nsrv_lookup_server = \"10.0.0.1\"\nsrv_lookup_pattern = \"_a._tcp.b\"",
        ) else {
            panic!("srv");
        };
        assert_eq!(params.server, "10.0.0.1:53".parse().expect("addr"));
        assert_eq!(params.protocol, DnsProtocol::Udp);
    }

    #[test]
    fn a_ca_file_needs_an_https_endpoint() {
        for kind in ["json", "plaintext"] {
            let text = format!(
                "[servers.a]\nbind = \":1\"\n[servers.a.discovery]\nkind = \"{kind}\"\n\
                 {kind}_endpoint = \"http://h/\"\n{kind}_tls_cacert_path = \"/ca.pem\"\n"
            );
            let err = crate::config::parse(&text, Path::new("t.toml"))
                .expect_err("a CA file for http://")
                .to_string();
            assert!(
                err.contains(&format!(
                    "t.toml:6:1: servers.a.discovery.{kind}_tls_cacert_path"
                )),
                "{err}"
            );
            assert!(err.contains("https://"), "{err}");
            let ok = text.replace("http://", "https://");
            crate::config::parse(&ok, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
            let unset = text.replace("/ca.pem", "");
            crate::config::parse(&unset, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn secrets_of_sources_are_redacted() {
        let text = include_str!("../../tests/configs/valid/discovery.toml");
        let config = crate::config::parse(text, Path::new("d.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        let redacted = dump::to_json(&config, Secrets::Redact).to_string();
        for secret in ["consul-secret", "acl-token", "etcd-secret"] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        let kept = dump::to_json(&config, Secrets::Keep).to_string();
        assert!(kept.contains("consul-secret") && !kept.contains(REDACTED));
    }
}
