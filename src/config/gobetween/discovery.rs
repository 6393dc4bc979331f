//! `[servers.NAME.discovery]` read from the file: the keys every kind shares, then each
//! kind's own keys into its own parameters (one function per kind; the service
//! registries, which add credentials and TLS, are in `registries`).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::legacy::{self, Place};
use super::reader::{resolve, Ctx, Field, Section};
use super::registries;
use crate::backend::BackendSpec;
use crate::config::discovery::*;
use crate::config::static_list;
use crate::config::{JsonPath, LinePattern, Url};

pub(crate) const COMMON_KEYS: &[&str] = &["kind", "failpolicy", "interval", "timeout"];

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
    let config = match kind {
        "static" => static_kind(ctx, &mut sec),
        "srv" => srv(ctx, &mut sec).map(|params| DiscoveryConfig::Srv { common, params }),
        "dns" => dns(ctx, &mut sec).map(|params| DiscoveryConfig::Dns { common, params }),
        "json" => json(ctx, &mut sec).map(|params| DiscoveryConfig::Json { common, params }),
        "plaintext" => {
            plaintext(ctx, &mut sec).map(|params| DiscoveryConfig::Plaintext { common, params })
        }
        "exec" => exec(ctx, &mut sec).map(|params| DiscoveryConfig::Exec { common, params }),
        "file" => file(ctx, &mut sec).map(|params| DiscoveryConfig::File { common, params }),
        "consul" => registries::consul(ctx, &mut sec, &common)
            .map(|params| DiscoveryConfig::Consul { common, params }),
        "etcd" => registries::etcd(ctx, &mut sec, &common)
            .map(|params| DiscoveryConfig::Etcd { common, params }),
        _ => registries::docker(ctx, &mut sec, &common)
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
pub(super) fn required<'t>(
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
    Some(DiscoveryConfig::Static {
        backends: backends.into(),
    })
}

fn static_list(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<BackendSpec>> {
    let lines = ctx.string_items(f)?;
    if lines.is_empty() {
        ctx.error(f.at, f.path(), "empty; a server needs at least one backend");
        return None;
    }
    let list = f.path();
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(lines.len());
    // Where each parsed backend's line is, and its index in the list.
    let mut places = Vec::with_capacity(lines.len());
    let mut ok = true;
    for (at, i, line) in lines {
        match line.parse::<BackendSpec>() {
            Ok(spec) => {
                backends.push(spec);
                places.push((at, i));
            }
            Err(message) => {
                ctx.error(at, &format!("{list}[{i}]"), message);
                ok = false;
            }
        }
    }
    for (repeat, first) in static_list::duplicates(&backends) {
        let ((at, i), (_, first_i)) = (places[repeat], places[first]);
        let message = format!(
            "duplicate backend {} (also {list}[{first_i}])",
            backends[repeat].key()
        );
        ctx.error(at, &format!("{list}[{i}]"), message);
        ok = false;
    }
    ok.then_some(backends)
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
    let port = required(ctx, sec, "dns_port", "dns").and_then(|f| ctx.port(&f));
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

fn endpoint(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, key: &str, kind: &str) -> Option<Url> {
    let f = required(ctx, sec, key, kind)?;
    ctx.parse(&f, "a URL such as \"http://host/backends\"", Url::parse)
}

fn json(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<JsonParams> {
    let endpoint = endpoint(ctx, sec, "json_endpoint", "json");
    let mut patterns = Vec::with_capacity(JSON_DEFAULT_PATTERNS.len());
    let mut ok = true;
    for (key, default) in JSON_DEFAULT_PATTERNS {
        match sec.take(key) {
            Some(f) => match ctx.parse(&f, "a path such as \"host\"", JsonPath::parse) {
                Some(p) => patterns.push(p),
                None => ok = false,
            },
            None => patterns.push(JsonPath::key(default)),
        }
    }
    let sni_pattern = match sec.take("json_sni_pattern") {
        Some(f) => Some(ctx.parse(&f, "a path such as \"sni\"", JsonPath::parse)?),
        None => None,
    };
    let cacert_path = cacert_path(ctx, sec, "json", endpoint.as_ref());
    let endpoint = endpoint?;
    if !ok {
        return None;
    }
    let [host_pattern, port_pattern, weight_pattern, priority_pattern, max_connections_pattern, backup_pattern]: [JsonPath; 6] =
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
    endpoint: Option<&Url>,
) -> Option<Option<PathBuf>> {
    let key = format!("{kind}_tls_cacert_path");
    let Some(f) = sec.take(&key) else {
        return Some(None);
    };
    let path = ctx.str(&f)?;
    if path.is_empty() {
        return Some(None);
    }
    if endpoint.is_some_and(|e| !e.https) {
        let message = format!("only used with an https:// {kind}_endpoint");
        ctx.error(f.at, f.path(), message);
        return None;
    }
    Some(Some(resolve(ctx.dir, path)))
}

fn plaintext(ctx: &mut Ctx<'_>, sec: &mut Section<'_>) -> Option<PlaintextParams> {
    let endpoint = endpoint(ctx, sec, "plaintext_endpoint", "plaintext");
    let pattern = match sec.take("plaintext_regex_pattern") {
        Some(f) => Some(ctx.parse(&f, "a regular expression", LinePattern::parse)?),
        None => None,
    };
    let cacert_path = cacert_path(ctx, sec, "plaintext", endpoint.as_ref());
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
pub(super) fn optional(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    key: &str,
) -> Option<Option<String>> {
    match sec.take(key) {
        Some(f) => Some(ctx.str(&f).map(|s| (!s.is_empty()).then(|| s.to_owned()))?),
        None => Some(None),
    }
}
