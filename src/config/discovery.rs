//! `[servers.NAME.discovery]`: where a server's backends come from, and the settings
//! every dynamic kind shares (`interval`, `timeout`, `failpolicy`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::dump::{Secrets, REDACTED};
use super::legacy::{self, Place};
use super::reader::{resolve, Ctx, Field, Section};
use crate::backend::BackendSpec;
use crate::discovery::consul::{self, ConsulParams};
use crate::discovery::docker::{self, DockerParams};
use crate::discovery::etcd::{self, EtcdParams};
use crate::tls::ClientTlsFiles;

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
    pub endpoint: String,
    pub host_pattern: String,
    pub port_pattern: String,
    pub weight_pattern: String,
    pub priority_pattern: String,
    /// `json_max_connections_pattern` (Sluice extension).
    pub max_connections_pattern: String,
    /// `json_backup_pattern` (Sluice extension).
    pub backup_pattern: String,
    /// `json_sni_pattern`; without it no SNI is read.
    pub sni_pattern: Option<String>,
    /// `json_tls_cacert_path` (Sluice extension): CA certificates that verify an
    /// `https://` endpoint; `None` trusts the system's store.
    pub cacert_path: Option<PathBuf>,
}

/// `kind = "plaintext"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaintextParams {
    /// `plaintext_endpoint`: an `http://` or `https://` URL.
    pub endpoint: String,
    /// `plaintext_regex_pattern`: a regex with named groups `host`, `port` and optional
    /// `weight`, `priority`, `max_connections`, `sni`, `backup`; without it lines are read
    /// in the backend line grammar.
    pub pattern: Option<String>,
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

const COMMON_KEYS: &[&str] = &["kind", "failpolicy", "interval", "timeout"];

/// The kinds Sluice has, each with the keys only it reads.
pub(crate) const KINDS: &[(&str, &[&str])] = &[
    ("static", &["static_list"]),
    (
        "srv",
        &[
            "srv_lookup_server",
            "srv_lookup_pattern",
            "srv_dns_protocol",
        ],
    ),
    (
        "dns",
        &["dns_hostname", "dns_port", "dns_server", "dns_protocol"],
    ),
    (
        "json",
        &[
            "json_endpoint",
            "json_host_pattern",
            "json_port_pattern",
            "json_weight_pattern",
            "json_priority_pattern",
            "json_max_connections_pattern",
            "json_backup_pattern",
            "json_sni_pattern",
            "json_tls_cacert_path",
        ],
    ),
    (
        "plaintext",
        &[
            "plaintext_endpoint",
            "plaintext_regex_pattern",
            "plaintext_tls_cacert_path",
        ],
    ),
    ("exec", &["exec_command"]),
    ("file", &["file_path"]),
    (
        "consul",
        &[
            "consul_host",
            "consul_service_name",
            "consul_service_tag",
            "consul_service_passing_only",
            "consul_datacenter",
            "consul_auth_username",
            "consul_auth_password",
            "consul_token",
            "consul_tls_enabled",
            "consul_tls_cert_path",
            "consul_tls_key_path",
            "consul_tls_cacert_path",
        ],
    ),
    (
        "etcd",
        &[
            "etcd_endpoints",
            "etcd_prefix",
            "etcd_username",
            "etcd_password",
            "etcd_dsn_json_path",
            "etcd_tls_enabled",
            "etcd_tls_cert_path",
            "etcd_tls_key_path",
            "etcd_tls_cacert_path",
        ],
    ),
    (
        "docker",
        &[
            "docker_endpoint",
            "docker_container_label",
            "docker_container_private_port",
            "docker_container_host_env_var",
            "docker_tls_enabled",
            "docker_tls_cert_path",
            "docker_tls_key_path",
            "docker_tls_cacert_path",
        ],
    ),
];

pub(crate) fn discovery(ctx: &mut Ctx<'_>, mut sec: Section<'_>) -> Option<DiscoveryConfig> {
    let names: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
    let Some(f) = sec.take("kind") else {
        let message = format!(
            "missing required key \"kind\" (one of {})",
            names.join(", ")
        );
        ctx.error(sec.at, &sec.path, message);
        return None;
    };
    let kind = ctx.str(&f)?;
    let Some((kind, own_keys)) = KINDS.iter().find(|(k, _)| *k == kind).copied() else {
        // An unsupported kind is the one error that matters: its other keys are not
        // checked.
        let message = if legacy::is_unsupported_kind(Place::Discovery, kind) {
            format!("discovery kind \"{kind}\" is not supported yet")
        } else {
            format!(
                "unknown discovery kind \"{kind}\"; expected one of {}",
                names.join(", ")
            )
        };
        ctx.error(f.at, f.path(), message);
        return None;
    };
    legacy::apply(ctx, &mut sec, Place::Discovery);
    legacy::reject_other_kinds(ctx, &mut sec, Place::Discovery, kind);
    for (other, keys) in KINDS.iter().filter(|(k, _)| *k != kind) {
        for key in keys.iter() {
            if let Some(field) = sec.take(key) {
                let message = format!(
                    "only used by discovery kind \"{other}\" (this discovery is \"{kind}\")"
                );
                ctx.error(field.at, field.path(), message);
            }
        }
    }
    let common = common(ctx, &mut sec);
    let config =
        match kind {
            "static" => static_kind(ctx, &mut sec),
            "srv" => srv(ctx, &mut sec).map(|params| DiscoveryConfig::Srv { common, params }),
            "dns" => dns(ctx, &mut sec).map(|params| DiscoveryConfig::Dns { common, params }),
            "json" => json(ctx, &mut sec).map(|params| DiscoveryConfig::Json { common, params }),
            "plaintext" => {
                plaintext(ctx, &mut sec).map(|params| DiscoveryConfig::Plaintext { common, params })
            }
            "exec" => exec(ctx, &mut sec).map(|params| DiscoveryConfig::Exec { common, params }),
            "file" => file(ctx, &mut sec).map(|params| DiscoveryConfig::File { common, params }),
            "consul" => consul(ctx, &mut sec, &common)
                .map(|params| DiscoveryConfig::Consul { common, params }),
            "etcd" => {
                etcd(ctx, &mut sec, &common).map(|params| DiscoveryConfig::Etcd { common, params })
            }
            _ => docker(ctx, &mut sec, &common)
                .map(|params| DiscoveryConfig::Docker { common, params }),
        };
    let mut known: Vec<&str> = COMMON_KEYS.to_vec();
    known.extend_from_slice(own_keys);
    sec.finish(ctx, &known);
    config
}

fn common(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> DiscoveryCommon {
    let mut common = DiscoveryCommon::default();
    let policies = [
        ("keeplast", FailPolicy::KeepLast),
        ("setempty", FailPolicy::SetEmpty),
    ];
    if let Some(p) = sec
        .take("failpolicy")
        .and_then(|f| ctx.choice(&f, &policies))
    {
        common.failpolicy = p;
    }
    if let Some(d) = sec.take("interval").and_then(|f| ctx.duration(&f)) {
        common.interval = d;
    }
    if let Some(d) = sec.take("timeout").and_then(|f| ctx.duration(&f)) {
        if !d.is_zero() {
            common.timeout = d;
        }
    }
    common
}

/// A required key; its absence is reported against the section.
fn required<'t>(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'t>,
    key: &str,
    kind: &str,
) -> Option<Field<'t>> {
    let field = sec.take(key);
    if field.is_none() {
        let message = format!("missing required key \"{key}\" for kind \"{kind}\"");
        ctx.error(sec.at, &sec.path, message);
    }
    field
}

fn static_kind(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<DiscoveryConfig> {
    let f = required(ctx, sec, "static_list", "static")?;
    let backends = static_list(ctx, &f)?;
    Some(DiscoveryConfig::Static { backends })
}

fn static_list(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<BackendSpec>> {
    let lines = ctx.strings(f)?;
    if lines.is_empty() {
        ctx.error(f.at, f.path(), "empty; a server needs at least one backend");
        return None;
    }
    let mut backends: Vec<(BackendSpec, String)> = Vec::with_capacity(lines.len());
    let mut ok = true;
    for (at, path, line) in lines {
        match line.parse::<BackendSpec>() {
            Ok(spec) => {
                let key = spec.key().to_ascii_lowercase();
                if let Some((_, first)) = backends
                    .iter()
                    .find(|(b, _)| b.key().to_ascii_lowercase() == key)
                {
                    ctx.error(
                        at,
                        &path,
                        format!("duplicate backend {} (also {first})", spec.key()),
                    );
                    ok = false;
                } else {
                    backends.push((spec, path));
                }
            }
            Err(message) => {
                ctx.error(at, &path, message);
                ok = false;
            }
        }
    }
    ok.then(|| backends.into_iter().map(|(spec, _)| spec).collect())
}

fn protocol(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str) -> Option<DnsProtocol> {
    let choices = [("udp", DnsProtocol::Udp), ("tcp", DnsProtocol::Tcp)];
    match sec.take(key) {
        Some(f) => ctx.choice(&f, &choices),
        None => Some(DnsProtocol::Udp),
    }
}

/// `IP:PORT`, or an IP alone for port 53.
fn dns_server(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = text.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!("\"{text}\" is not a DNS server address; expected \"IP:PORT\" or \"IP\"")
        })
}

fn srv(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<SrvParams> {
    let server = required(ctx, sec, "srv_lookup_server", "srv")
        .and_then(|f| ctx.parse(&f, "a string such as \"10.0.0.2:53\"", dns_server));
    let pattern = required(ctx, sec, "srv_lookup_pattern", "srv")
        .and_then(|f| ctx.parse(&f, "a DNS name", dns_name));
    let protocol = protocol(ctx, sec, "srv_dns_protocol");
    Some(SrvParams {
        server: server?,
        pattern: pattern?,
        protocol: protocol?,
    })
}

/// A DNS name: dot-separated labels of 1 to 63 bytes, 253 bytes in all.
fn dns_name(text: &str) -> Result<String, String> {
    let bare = text.strip_suffix('.').unwrap_or(text);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!("\"{text}\" is not a DNS name"));
    }
    Ok(text.to_owned())
}

fn dns(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<DnsParams> {
    let hostname = required(ctx, sec, "dns_hostname", "dns")
        .and_then(|f| ctx.parse(&f, "a host name", dns_name));
    let port = required(ctx, sec, "dns_port", "dns").and_then(|f| {
        let n = ctx.u32_at_least(&f, 1)?;
        match u16::try_from(n) {
            Ok(port) => Some(port),
            Err(_) => {
                ctx.error(f.at, f.path(), format!("must be at most 65535, got {n}"));
                None
            }
        }
    });
    let server = match sec.take("dns_server") {
        Some(f) => Some(Some(ctx.parse(
            &f,
            "a string such as \"10.0.0.2:53\"",
            dns_server,
        )?)),
        None => Some(None),
    };
    let protocol = protocol(ctx, sec, "dns_protocol");
    Some(DnsParams {
        hostname: hostname?,
        port: port?,
        server: server?,
        protocol: protocol?,
    })
}

fn endpoint(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str, kind: &str) -> Option<String> {
    let f = required(ctx, sec, key, kind)?;
    ctx.parse(&f, "a URL such as \"http://host/backends\"", |text| {
        crate::discovery::http::Url::parse(text).map(|_| text.to_owned())
    })
}

fn json(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<JsonParams> {
    let endpoint = endpoint(ctx, sec, "json_endpoint", "json");
    let mut patterns = Vec::with_capacity(JSON_DEFAULT_PATTERNS.len());
    let mut ok = true;
    for (key, default) in JSON_DEFAULT_PATTERNS {
        match sec.take(key) {
            Some(f) => match ctx.parse(&f, "a path such as \"host\"", json_path) {
                Some(p) => patterns.push(p),
                None => ok = false,
            },
            None => patterns.push(default.to_owned()),
        }
    }
    let sni_pattern = match sec.take("json_sni_pattern") {
        Some(f) => Some(ctx.parse(&f, "a path such as \"sni\"", json_path)?),
        None => None,
    };
    let cacert_path = cacert_path(ctx, sec, "json", endpoint.as_deref());
    let endpoint = endpoint?;
    if !ok {
        return None;
    }
    let [host_pattern, port_pattern, weight_pattern, priority_pattern, max_connections_pattern, backup_pattern]: [String; 6] =
        patterns.try_into().ok()?;
    Some(JsonParams {
        endpoint,
        host_pattern,
        port_pattern,
        weight_pattern,
        priority_pattern,
        max_connections_pattern,
        backup_pattern,
        sni_pattern,
        cacert_path: cacert_path?,
    })
}

/// `KIND_tls_cacert_path`; `""` counts as unset. With an `http://` endpoint the file
/// would be silently unused, so giving one there is an error.
fn cacert_path(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    kind: &str,
    endpoint: Option<&str>,
) -> Option<Option<PathBuf>> {
    let key = format!("{kind}_tls_cacert_path");
    let Some(f) = sec.take(&key) else {
        return Some(None);
    };
    let path = ctx.str(&f)?;
    if path.is_empty() {
        return Some(None);
    }
    if endpoint.is_some_and(|e| !e.starts_with("https://")) {
        let message = format!("only used with an https:// {kind}_endpoint");
        ctx.error(f.at, f.path(), message);
        return None;
    }
    Some(Some(resolve(ctx.dir, path)))
}

fn json_path(text: &str) -> Result<String, String> {
    crate::discovery::http::JsonPath::parse(text).map(|_| text.to_owned())
}

fn plaintext(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<PlaintextParams> {
    let endpoint = endpoint(ctx, sec, "plaintext_endpoint", "plaintext");
    let pattern = match sec.take("plaintext_regex_pattern") {
        Some(f) => Some(ctx.parse(&f, "a regular expression", |text| {
            crate::discovery::http::LinePattern::parse(text).map(|_| text.to_owned())
        })?),
        None => None,
    };
    let cacert_path = cacert_path(ctx, sec, "plaintext", endpoint.as_deref());
    Some(PlaintextParams {
        endpoint: endpoint?,
        pattern,
        cacert_path: cacert_path?,
    })
}

fn exec(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<ExecParams> {
    let f = required(ctx, sec, "exec_command", "exec")?;
    let words = ctx.strings(&f)?;
    let Some((at, path, program)) = words.first().filter(|(_, _, p)| !p.is_empty()) else {
        let message = "needs the program to run, e.g. [\"/usr/local/bin/backends\", \"web\"]";
        ctx.error(f.at, f.path(), message);
        return None;
    };
    // Only the program is resolved: arguments are the program's to interpret.
    let program = ctx.program(*at, path, program)?;
    let args = words[1..].iter().map(|(_, _, arg)| (*arg).to_owned());
    Some(ExecParams {
        command: std::iter::once(program).chain(args).collect(),
    })
}

fn file(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<FileParams> {
    let f = required(ctx, sec, "file_path", "file")?;
    Some(FileParams {
        path: ctx.path(&f)?,
    })
}

/// An optional string; an empty one counts as absent (GoBetween's example configuration
/// lists every key with `""`).
fn optional(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str) -> Option<Option<String>> {
    match sec.take(key) {
        Some(f) => Some(ctx.str(&f).map(|s| (!s.is_empty()).then(|| s.to_owned()))?),
        None => Some(None),
    }
}

/// `PREFIX_tls_enabled` with its three paths: `Some` when enabled. A path given while TLS
/// is off would be silently unused, so it is an error; so is half a client pair.
fn client_tls(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    prefix: &str,
) -> Option<Option<ClientTlsFiles>> {
    let enabled_key = format!("{prefix}_tls_enabled");
    let enabled = match sec.take(&enabled_key) {
        Some(f) => ctx.bool(&f)?,
        None => false,
    };
    let mut paths = Vec::with_capacity(3);
    let mut ok = true;
    for what in ["cert", "key", "cacert"] {
        let key = format!("{prefix}_tls_{what}_path");
        let Some(f) = sec.take(&key) else {
            paths.push(None);
            continue;
        };
        match ctx.str(&f) {
            Some("") => paths.push(None),
            Some(_) if !enabled => {
                let message = format!("only used with {enabled_key} = true");
                ctx.error(f.at, f.path(), message);
                ok = false;
            }
            Some(path) => paths.push(Some(resolve(ctx.dir, path))),
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    let [cert_path, key_path, cacert_path]: [Option<PathBuf>; 3] = paths.try_into().ok()?;
    if cert_path.is_some() != key_path.is_some() {
        let message = format!(
            "{prefix}_tls_cert_path and {prefix}_tls_key_path go together: give both or neither"
        );
        ctx.error(sec.at, &sec.path, message);
        return None;
    }
    Some(enabled.then_some(ClientTlsFiles {
        cert_path,
        key_path,
        cacert_path,
    }))
}

/// A password needs the user name it goes with.
fn credentials(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    user_key: &str,
    password_key: &str,
) -> Option<(Option<String>, Option<String>)> {
    let user = optional(ctx, sec, user_key)?;
    let at = sec.find(password_key);
    let password = optional(ctx, sec, password_key)?;
    if let (None, Some(_), Some(at)) = (&user, &password, at) {
        let path = super::reader::join(&sec.path, password_key);
        ctx.error(at, &path, format!("needs {user_key}"));
        return None;
    }
    Some((user, password))
}

fn consul(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    common: &DiscoveryCommon,
) -> Option<ConsulParams> {
    let host = required(ctx, sec, "consul_host", "consul").and_then(|f| {
        ctx.parse(&f, "a string such as \"localhost:8500\"", |text| {
            if text.contains("://") {
                return Err(format!(
                    "\"{text}\" is a URL; expected host[:port] (HTTPS is consul_tls_enabled)"
                ));
            }
            crate::discovery::http_client::split_host_port(text, Some(consul::DEFAULT_PORT))
                .map(|_| text.to_owned())
        })
    });
    let service = required(ctx, sec, "consul_service_name", "consul").and_then(|f| {
        let name = ctx.non_empty(&f)?;
        Some(name.to_owned())
    });
    let tag = optional(ctx, sec, "consul_service_tag");
    let passing_only = match sec.take("consul_service_passing_only") {
        Some(f) => ctx.bool(&f),
        None => Some(false),
    };
    let datacenter = optional(ctx, sec, "consul_datacenter");
    let auth = credentials(ctx, sec, "consul_auth_username", "consul_auth_password");
    let token = optional(ctx, sec, "consul_token");
    let tls = client_tls(ctx, sec, "consul");
    let mut params = ConsulParams::new(host?, service?);
    params.service_tag = tag?;
    params.passing_only = passing_only?;
    params.datacenter = datacenter?;
    (params.auth_username, params.auth_password) = auth?;
    params.acl_token = token?;
    params.tls = tls?;
    params.timeout = common.timeout;
    Some(params)
}

fn etcd(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, common: &DiscoveryCommon) -> Option<EtcdParams> {
    let endpoints = required(ctx, sec, "etcd_endpoints", "etcd").and_then(|f| {
        let list = ctx.strings(&f)?;
        if list.is_empty() {
            ctx.error(f.at, f.path(), "empty; give at least one etcd client URL");
            return None;
        }
        let mut ok = true;
        let mut out = Vec::with_capacity(list.len());
        for (at, path, text) in list {
            // The source's own check, without TLS files (read when it starts).
            match etcd::EtcdSource::new(EtcdParams::new(text, "")) {
                Ok(_) => out.push(text.to_owned()),
                Err(e) => {
                    ctx.error(at, &path, e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    });
    let prefix = match sec.take("etcd_prefix") {
        Some(f) => ctx.str(&f).map(str::to_owned),
        None => Some(String::new()),
    };
    let auth = credentials(ctx, sec, "etcd_username", "etcd_password");
    let dsn = match sec.take("etcd_dsn_json_path") {
        Some(f) => ctx.non_empty(&f).map(|s| Some(s.to_owned())),
        None => Some(None),
    };
    let tls = client_tls(ctx, sec, "etcd");
    let endpoints = endpoints?;
    let mut params = EtcdParams::new(String::new(), prefix?);
    params.endpoints = endpoints;
    (params.username, params.password) = auth?;
    params.dsn_json_path = dsn?;
    params.tls = tls?;
    params.timeout = common.timeout;
    Some(params)
}

fn docker(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    common: &DiscoveryCommon,
) -> Option<DockerParams> {
    let port = required(ctx, sec, "docker_container_private_port", "docker").and_then(|f| {
        let n = ctx.u32_at_least(&f, 1)?;
        match u16::try_from(n) {
            Ok(port) => Some(port),
            Err(_) => {
                ctx.error(f.at, f.path(), format!("must be at most 65535, got {n}"));
                None
            }
        }
    });
    let endpoint_at = sec.find("docker_endpoint");
    let endpoint = optional(ctx, sec, "docker_endpoint");
    let label = optional(ctx, sec, "docker_container_label");
    let host_env = optional(ctx, sec, "docker_container_host_env_var");
    let tls = client_tls(ctx, sec, "docker");
    let mut params = DockerParams::new(port?);
    if let Some(endpoint) = endpoint? {
        params.endpoint = endpoint;
    }
    params.container_label = label?;
    params.container_host_env_var = host_env?;
    params.timeout = common.timeout;
    // The source's own check of the endpoint, without TLS files (read when it starts).
    if let Err(e) = docker::DockerSource::new(params.clone()) {
        let at = endpoint_at.unwrap_or(sec.at);
        let path = super::reader::join(&sec.path, "docker_endpoint");
        let message = e.to_string();
        let message = message
            .strip_prefix("docker_endpoint: ")
            .unwrap_or(&message);
        ctx.error(at, &path, message);
        return None;
    }
    params.tls = tls?;
    Some(params)
}

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
                    "json_endpoint": super::dump::url(&params.endpoint, secrets),
                    "json_host_pattern": params.host_pattern,
                    "json_port_pattern": params.port_pattern,
                    "json_weight_pattern": params.weight_pattern,
                    "json_priority_pattern": params.priority_pattern,
                    "json_max_connections_pattern": params.max_connections_pattern,
                    "json_backup_pattern": params.backup_pattern,
                });
                if let Value::Object(map) = &mut own {
                    if let Some(sni) = &params.sni_pattern {
                        map.insert("json_sni_pattern".into(), sni.clone().into());
                    }
                    if let Some(path) = &params.cacert_path {
                        let path = path.display().to_string();
                        map.insert("json_tls_cacert_path".into(), path.into());
                    }
                }
                own
            }
            DiscoveryConfig::Plaintext { params, .. } => {
                let endpoint = super::dump::url(&params.endpoint, secrets);
                let mut own = json!({ "plaintext_endpoint": endpoint });
                if let Value::Object(map) = &mut own {
                    if let Some(pattern) = &params.pattern {
                        map.insert("plaintext_regex_pattern".into(), pattern.clone().into());
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
                    put_some(map, "etcd_dsn_json_path", &params.dsn_json_path);
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
