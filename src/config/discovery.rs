//! `[servers.NAME.discovery]`: where a server's backends come from, and the settings
//! every dynamic kind shares (`interval`, `timeout`, `failpolicy`); written back out for
//! the dump. The reader that fills them from a file is `discovery_reader`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::dump::{Secrets, REDACTED};
use super::{ClientTlsFiles, ConsulParams, DockerParams, EtcdParams, JsonPath, LinePattern, Url};
use crate::backend::BackendSpec;

/// What `timeout = "0"` (or no `timeout`) means for a dynamic kind. GoBetween's "0"
/// waits forever, which lets one hung source freeze a server's backends for good.
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `[servers.NAME.discovery]`.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscoveryConfig {
    /// `kind = "static"`: the `static_list`.
    Static { backends: Vec<BackendSpec> },
    /// `kind = "srv"`: DNS SRV records.
    Srv {
        common: DiscoveryCommon,
        params: SrvParams,
    },
    /// `kind = "dns"`: a host name's A/AAAA records and one port.
    Dns {
        common: DiscoveryCommon,
        params: DnsParams,
    },
    /// `kind = "json"`: a JSON array fetched over HTTP(S).
    Json {
        common: DiscoveryCommon,
        params: JsonParams,
    },
    /// `kind = "plaintext"`: backend lines fetched over HTTP(S).
    Plaintext {
        common: DiscoveryCommon,
        params: PlaintextParams,
    },
    /// `kind = "exec"`: a command printing backend lines.
    Exec {
        common: DiscoveryCommon,
        params: ExecParams,
    },
    /// `kind = "file"`: a file of backend lines or JSON, re-read when it changes.
    File {
        common: DiscoveryCommon,
        params: FileParams,
    },
    /// `kind = "consul"`: the instances of a Consul service.
    Consul {
        common: DiscoveryCommon,
        params: ConsulParams,
    },
    /// `kind = "etcd"`: the keys under an etcd prefix.
    Etcd {
        common: DiscoveryCommon,
        params: EtcdParams,
    },
    /// `kind = "docker"`: containers publishing a port.
    Docker {
        common: DiscoveryCommon,
        params: DockerParams,
    },
}

impl DiscoveryConfig {
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
    pub fn static_backends(&self) -> Option<&Vec<BackendSpec>> {
        match self {
            DiscoveryConfig::Static { backends } => Some(backends),
            _ => None,
        }
    }
}

/// `interval`, `timeout` and `failpolicy`, shared by every dynamic kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryCommon {
    /// Time between fetches; zero fetches until the first success, then never again
    /// (GoBetween's meaning). `dns` refreshes by TTL and `file` polls every second; a
    /// shorter non-zero `interval` makes either look sooner.
    pub interval: Duration,
    /// Longest one fetch may take; never zero (see [`DEFAULT_DISCOVERY_TIMEOUT`]).
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvParams {
    /// `srv_lookup_server`: the DNS server asked (port 53 unless given).
    pub server: SocketAddr,
    /// `srv_lookup_pattern`: the SRV name, e.g. `_web._tcp.example.com.`
    pub pattern: String,
    /// `srv_dns_protocol`.
    pub protocol: DnsProtocol,
}

/// `kind = "dns"` (Sluice extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsParams {
    /// `dns_hostname`: whose A and AAAA records are the backends.
    pub hostname: String,
    /// `dns_port`: the port of every backend.
    pub port: u16,
    /// `dns_server`: the DNS server asked; `None` uses the system's resolver.
    pub server: Option<SocketAddr>,
    /// `dns_protocol`, towards `server`.
    pub protocol: DnsProtocol,
}

/// `kind = "json"`: GoBetween's patterns are paths into each element of the array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonParams {
    /// `json_endpoint`: an `http://` or `https://` URL.
    pub endpoint: Url,
    pub host_pattern: JsonPath,
    pub port_pattern: JsonPath,
    pub weight_pattern: JsonPath,
    pub priority_pattern: JsonPath,
    /// `json_max_connections_pattern` (Sluice extension).
    pub max_connections_pattern: JsonPath,
    /// `json_backup_pattern` (Sluice extension).
    pub backup_pattern: JsonPath,
    /// `json_sni_pattern`; without it no SNI is read.
    pub sni_pattern: Option<JsonPath>,
    /// `json_tls_cacert_path` (Sluice extension): CA certificates that verify an
    /// `https://` endpoint; `None` trusts the system's store.
    pub cacert_path: Option<PathBuf>,
}

/// `kind = "plaintext"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaintextParams {
    /// `plaintext_endpoint`: an `http://` or `https://` URL.
    pub endpoint: Url,
    /// `plaintext_regex_pattern`: a regex with named groups `host`, `port` and optional
    /// `weight`, `priority`, `max_connections`, `sni`, `backup`; without it lines are read
    /// in the backend line grammar.
    pub pattern: Option<LinePattern>,
    /// `plaintext_tls_cacert_path` (Sluice extension), as for `json`.
    pub cacert_path: Option<PathBuf>,
}

/// `kind = "exec"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecParams {
    /// `exec_command`: the program and its arguments (no shell). A program given as a
    /// relative path with a `/` is already taken from the configuration's directory; a
    /// bare name is looked up in `PATH`; arguments are as written.
    pub command: Vec<String>,
}

/// `kind = "file"` (Sluice extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileParams {
    /// `file_path`.
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

impl DiscoveryConfig {
    /// The section as the configuration writes it; [`discovery`] reads it back as it was.
    pub(crate) fn to_json(&self, secrets: Secrets) -> serde_json::Value {
        use serde_json::{json, Value};
        let secret = |s: &str| match secrets {
            Secrets::Keep => s.to_owned(),
            Secrets::Redact => REDACTED.to_owned(),
        };
        let mut out = serde_json::Map::new();
        out.insert("kind".into(), self.kind().into());
        if let Some(common) = self.common() {
            out.insert("failpolicy".into(), common.failpolicy.as_str().into());
            out.insert(
                "interval".into(),
                super::dump::duration(common.interval).into(),
            );
            out.insert(
                "timeout".into(),
                super::dump::duration(common.timeout).into(),
            );
        }
        let own = match self {
            DiscoveryConfig::Static { backends } => json!({
                "static_list": backends.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
            DiscoveryConfig::Srv { params, .. } => json!({
                "srv_lookup_server": params.server.to_string(),
                "srv_lookup_pattern": params.pattern,
                "srv_dns_protocol": params.protocol.as_str(),
            }),
            DiscoveryConfig::Dns { params, .. } => {
                let mut own = json!({
                    "dns_hostname": params.hostname,
                    "dns_port": params.port,
                    "dns_protocol": params.protocol.as_str(),
                });
                if let (Some(server), Value::Object(map)) = (params.server, &mut own) {
                    map.insert("dns_server".into(), server.to_string().into());
                }
                own
            }
            DiscoveryConfig::Json { params, .. } => {
                let mut own = json!({
                    "json_endpoint": super::dump::url(params.endpoint.as_str(), secrets),
                    "json_host_pattern": params.host_pattern.as_str(),
                    "json_port_pattern": params.port_pattern.as_str(),
                    "json_weight_pattern": params.weight_pattern.as_str(),
                    "json_priority_pattern": params.priority_pattern.as_str(),
                    "json_max_connections_pattern": params.max_connections_pattern.as_str(),
                    "json_backup_pattern": params.backup_pattern.as_str(),
                });
                if let Value::Object(map) = &mut own {
                    if let Some(sni) = &params.sni_pattern {
                        map.insert("json_sni_pattern".into(), sni.as_str().into());
                    }
                    if let Some(path) = &params.cacert_path {
                        let path = path.display().to_string();
                        map.insert("json_tls_cacert_path".into(), path.into());
                    }
                }
                own
            }
            DiscoveryConfig::Plaintext { params, .. } => {
                let endpoint = super::dump::url(params.endpoint.as_str(), secrets);
                let mut own = json!({ "plaintext_endpoint": endpoint });
                if let Value::Object(map) = &mut own {
                    if let Some(pattern) = &params.pattern {
                        map.insert("plaintext_regex_pattern".into(), pattern.as_str().into());
                    }
                    if let Some(path) = &params.cacert_path {
                        let path = path.display().to_string();
                        map.insert("plaintext_tls_cacert_path".into(), path.into());
                    }
                }
                own
            }
            DiscoveryConfig::Exec { params, .. } => json!({ "exec_command": params.command }),
            DiscoveryConfig::File { params, .. } => {
                json!({ "file_path": params.path.display().to_string() })
            }
            DiscoveryConfig::Consul { params, .. } => {
                let mut own = json!({
                    "consul_host": params.host,
                    "consul_service_name": params.service_name,
                    "consul_service_passing_only": params.passing_only,
                });
                if let Value::Object(map) = &mut own {
                    put_some(map, "consul_service_tag", &params.service_tag);
                    put_some(map, "consul_datacenter", &params.datacenter);
                    put_some(map, "consul_auth_username", &params.auth_username);
                    put_some(
                        map,
                        "consul_auth_password",
                        &params.auth_password.as_deref().map(secret),
                    );
                    put_some(
                        map,
                        "consul_token",
                        &params.acl_token.as_deref().map(secret),
                    );
                    tls_json(map, "consul", params.tls.as_ref());
                }
                own
            }
            DiscoveryConfig::Etcd { params, .. } => {
                let mut own = json!({
                    "etcd_endpoints": params.endpoints.iter()
                        .map(|e| super::dump::url(e, secrets))
                        .collect::<Vec<_>>(),
                    "etcd_prefix": params.prefix,
                });
                if let Value::Object(map) = &mut own {
                    put_some(map, "etcd_username", &params.username);
                    put_some(
                        map,
                        "etcd_password",
                        &params.password.as_deref().map(secret),
                    );
                    let dsn = params.dsn_json_path.as_ref().map(ToString::to_string);
                    put_some(map, "etcd_dsn_json_path", &dsn);
                    tls_json(map, "etcd", params.tls.as_ref());
                }
                own
            }
            DiscoveryConfig::Docker { params, .. } => {
                let mut own = json!({
                    "docker_endpoint": super::dump::url(&params.endpoint, secrets),
                    "docker_container_private_port": params.container_private_port,
                });
                if let Value::Object(map) = &mut own {
                    put_some(map, "docker_container_label", &params.container_label);
                    put_some(
                        map,
                        "docker_container_host_env_var",
                        &params.container_host_env_var,
                    );
                    tls_json(map, "docker", params.tls.as_ref());
                }
                own
            }
        };
        if let Value::Object(own) = own {
            out.extend(own);
        }
        Value::Object(out)
    }
}

/// Adds `key` to `map` when `value` is set.
fn put_some(
    map: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    value: &Option<String>,
) {
    if let Some(value) = value {
        map.insert(key.into(), value.clone().into());
    }
}

/// `PREFIX_tls_enabled` and the paths that are set.
fn tls_json(
    map: &mut serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    tls: Option<&ClientTlsFiles>,
) {
    let Some(tls) = tls else { return };
    map.insert(format!("{prefix}_tls_enabled"), true.into());
    for (what, path) in [
        ("cert", &tls.cert_path),
        ("key", &tls.key_path),
        ("cacert", &tls.cacert_path),
    ] {
        if let Some(path) = path {
            map.insert(
                format!("{prefix}_tls_{what}_path"),
                path.display().to_string().into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
        let redacted = crate::config::dump::to_json(&config, Secrets::Redact).to_string();
        for secret in ["consul-secret", "acl-token", "etcd-secret"] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
        let kept = crate::config::dump::to_json(&config, Secrets::Keep).to_string();
        assert!(kept.contains("consul-secret") && !kept.contains(REDACTED));
    }
}
