//! The service registries' discovery keys — Consul, etcd, Docker — with the
//! credentials and client TLS they share.

use std::path::PathBuf;

use super::discovery::{optional, required};
use super::reader::{resolve, Ctx, Section};
use crate::config::discovery::*;
use crate::config::error::join;
use crate::config::registries::{ConsulAgent, DockerEndpoint, DockerUrl, EtcdEndpoint};
use crate::config::{ClientTlsFiles, ConsulParams, DockerParams, EtcdParams, JsonPath};

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
        let path = join(&sec.path, password_key);
        ctx.error(at, &path, format!("needs {user_key}"));
        return None;
    }
    Some((user, password))
}

pub(super) fn consul(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    common: &DiscoveryCommon,
) -> Option<ConsulParams> {
    let host = required(ctx, sec, "consul_host", "consul").and_then(|f| {
        ctx.parse(
            &f,
            "a string such as \"localhost:8500\"",
            ConsulAgent::parse,
        )
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

pub(super) fn etcd(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    common: &DiscoveryCommon,
) -> Option<EtcdParams> {
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
            match EtcdEndpoint::parse(text) {
                Ok(endpoint) => match endpoint.https.then(|| system_trust("etcd")).transpose() {
                    Ok(_) => out.push(endpoint),
                    Err(e) => {
                        ctx.error(at, &path, e);
                        ok = false;
                    }
                },
                Err(e) => {
                    ctx.error(at, &path, format!("etcd_endpoints: {e}"));
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
        Some(f) => ctx.non_empty(&f).map(|s| Some(JsonPath::dsn(s))),
        None => Some(None),
    };
    let tls = client_tls(ctx, sec, "etcd");
    let mut endpoints = endpoints?.into_iter();
    let mut params = EtcdParams::new(endpoints.next()?, prefix?);
    params.endpoints.extend(endpoints);
    (params.username, params.password) = auth?;
    params.dsn_json_path = dsn?;
    params.tls = tls?;
    params.timeout = common.timeout;
    Some(params)
}

pub(super) fn docker(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    common: &DiscoveryCommon,
) -> Option<DockerParams> {
    let port =
        required(ctx, sec, "docker_container_private_port", "docker").and_then(|f| ctx.port(&f));
    let endpoint_at = sec.find("docker_endpoint");
    let endpoint = optional(ctx, sec, "docker_endpoint");
    let label = optional(ctx, sec, "docker_container_label");
    let host_env = optional(ctx, sec, "docker_container_host_env_var");
    let tls = client_tls(ctx, sec, "docker");
    let mut params = DockerParams::new(port?);
    params.container_label = label?;
    params.container_host_env_var = host_env?;
    params.timeout = common.timeout;
    // The source's own check of the endpoint, without TLS files (read when it starts).
    let checked = endpoint?
        .map(|text| DockerUrl::parse(&text))
        .transpose()
        .and_then(|url| {
            let url = url.unwrap_or_else(DockerUrl::local);
            if let DockerEndpoint::Tcp {
                tls_wanted: true, ..
            } = url.endpoint(false)?
            {
                system_trust("docker")?;
            }
            Ok(url)
        });
    match checked {
        Ok(url) => params.endpoint = url,
        Err(message) => {
            let at = endpoint_at.unwrap_or(sec.at);
            let path = join(&sec.path, "docker_endpoint");
            ctx.error(at, &path, message);
            return None;
        }
    }
    params.tls = tls?;
    Some(params)
}

/// Whether the system's trust store can verify an `https://` endpoint given without a
/// CA file, as the source will need it to.
fn system_trust(kind: &str) -> Result<(), String> {
    crate::tls::client_config(&ClientTlsFiles::default())
        .map(|_| ())
        .map_err(|e| format!("{kind} TLS: {e}"))
}
