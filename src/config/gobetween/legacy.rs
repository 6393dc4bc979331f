//! GoBetween compatibility: legacy keys still found in real configs, accepted with a
//! warning that names the replacement, and the GoBetween features Sluice does not have
//! yet, which must fail loudly rather than be silently ignored.

use super::file::Value;
use super::reader::{Ctx, Section};
use crate::config::error::join;

/// The kind of section a key sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Top,
    Defaults,
    Server,
    Discovery,
    Healthcheck,
    /// `[servers.NAME.tls]` and `[servers.NAME.backends_tls]`; unsupported for now, so
    /// the section error wins, but the keys are listed for when TLS lands.
    Tls,
}

enum Action {
    /// Read as the new key.
    Rename(&'static str),
    /// Dropped; the reason says why that is safe.
    Ignore(&'static str),
    /// Still read by the caller under its old name; the advice says what to do instead.
    Keep(&'static str),
}

/// The legacy keys still read in sections of `place`.
#[cfg(test)]
pub(crate) fn legacy_keys(place: Place) -> impl Iterator<Item = &'static str> {
    LEGACY
        .iter()
        .filter(move |(p, _, _)| *p == place)
        .map(|(_, key, _)| *key)
}

const LEGACY: &[(Place, &str, Action)] = &[
    (
        Place::Healthcheck,
        "ping_timeout_duration",
        Action::Rename("timeout"),
    ),
    (
        Place::Healthcheck,
        "exec_timeout_duration",
        Action::Rename("timeout"),
    ),
    (
        Place::Discovery,
        "consul_service_datacenter",
        Action::Rename("consul_datacenter"),
    ),
    (
        Place::Tls,
        "acme_enabled",
        Action::Ignore("ACME is used when `acme_hosts` is set"),
    ),
    (
        Place::Tls,
        "prefer_server_ciphers",
        Action::Ignore("with TLS 1.3, rustls chooses the cipher suite"),
    ),
    (
        Place::Defaults,
        "balance",
        Action::Keep("still applied as a default; set `balance` in each [servers.NAME] instead"),
    ),
];

/// Warns about every legacy key of `sec` and makes renamed ones answer to their new name.
/// Call before reading the section.
pub(crate) fn apply(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, place: Place) {
    for (_, old, action) in LEGACY.iter().filter(|(p, _, _)| *p == place) {
        let Some(at) = sec.find(old) else { continue };
        let path = join(&sec.path, old);
        match action {
            Action::Rename(new) if sec.find(new).is_some() => {
                sec.take(old);
                let message = format!("legacy name of \"{new}\", which is also set; remove one");
                ctx.error(at, &path, message);
            }
            Action::Rename(new) => {
                sec.rename(old, new);
                ctx.warn(
                    at,
                    &path,
                    format!("legacy GoBetween key; use \"{new}\" instead"),
                );
            }
            Action::Ignore(why) => {
                sec.take(old);
                ctx.warn(at, &path, format!("legacy GoBetween key, ignored: {why}"));
            }
            Action::Keep(advice) => ctx.warn(at, &path, format!("legacy GoBetween key, {advice}")),
        }
    }
}

/// GoBetween sections Sluice does not support yet, and what they are.
const UNSUPPORTED: &[(Place, &str, &str)] = &[(Place::Top, "profiler", "the profiler")];

/// Reports every unsupported GoBetween section of `sec` that is enabled. A section that
/// is off (`enabled = false`, or no `enabled = true`: GoBetween's default) asks for
/// nothing Sluice lacks, so a GoBetween file keeps working unchanged; it is accepted
/// without a word.
pub(crate) fn reject_unsupported(ctx: &mut Ctx<'_>, sec: &mut Section<'_>, place: Place) {
    for (_, key, what) in UNSUPPORTED.iter().filter(|(p, _, _)| *p == place) {
        let Some(field) = sec.take(key) else { continue };
        let path = field.path().to_owned();
        let enabled = match &field.node.value {
            Value::Table(entries) => entries
                .iter()
                .any(|e| e.key == "enabled" && !matches!(e.node.value, Value::Bool(false))),
            _ => true,
        };
        if enabled {
            let at = ctx.table_at(&field);
            ctx.error(at, &path, format!("[{path}] is not supported yet ({what})"));
        }
    }
}

/// Discovery kinds Sluice does not have yet, with their keys (the kinds it has list
/// their own keys in `discovery`).
const DISCOVERY_KINDS: &[(&str, &[&str])] = &[(
    "lxd",
    &[
        "lxd_server_address",
        "lxd_server_remote_name",
        "lxd_server_remote_password",
        "lxd_config_directory",
        "lxd_generate_client_certs",
        "lxd_accept_server_cert",
        "lxd_container_label_key",
        "lxd_container_label_value",
        "lxd_container_port",
        "lxd_container_port_key",
        "lxd_container_interface",
        "lxd_container_interface_key",
        "lxd_container_sni_key",
        "lxd_container_address_type",
    ],
)];

/// GoBetween's healthcheck kinds Sluice does not have yet, with their keys (every one
/// it knows is supported now; the list stays for the next).
const HEALTHCHECK_KINDS: &[(&str, &[&str])] = &[];

fn kinds(place: Place) -> &'static [(&'static str, &'static [&'static str])] {
    match place {
        Place::Discovery => DISCOVERY_KINDS,
        Place::Healthcheck => HEALTHCHECK_KINDS,
        _ => &[],
    }
}

/// Whether `kind` is a GoBetween kind of this section that Sluice does not have yet.
pub(crate) fn is_unsupported_kind(place: Place, kind: &str) -> bool {
    kinds(place).iter().any(|(k, _)| *k == kind)
}

/// Reports keys that belong to another kind of this section (`consul_host` in a static
/// discovery): GoBetween ignored them, but they are almost always a mistake.
pub(crate) fn reject_other_kinds(
    ctx: &mut Ctx<'_>,
    sec: &mut Section<'_>,
    place: Place,
    kind: &str,
) {
    let section = if place == Place::Discovery {
        "discovery"
    } else {
        "healthcheck"
    };
    for (other, keys) in kinds(place) {
        for key in keys.iter() {
            if let Some(field) = sec.take(key) {
                let message = format!(
                    "only used by {section} kind \"{other}\", which is not supported yet \
                     (this {section} is \"{kind}\")"
                );
                ctx.error(field.at, field.path(), message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_legacy_rename_targets_a_key_of_its_section() {
        for (place, old, action) in LEGACY {
            if let Action::Rename(new) = action {
                let known = match place {
                    Place::Healthcheck => new == &"timeout",
                    Place::Discovery => super::super::discovery::KINDS
                        .iter()
                        .any(|(_, keys)| keys.contains(new)),
                    _ => false,
                };
                assert!(known, "{old} -> {new}");
            }
        }
    }

    #[test]
    fn unsupported_kinds() {
        assert!(is_unsupported_kind(Place::Discovery, "lxd"));
        assert!(!is_unsupported_kind(Place::Healthcheck, "exec"));
        assert!(!is_unsupported_kind(Place::Discovery, "static"));
        assert!(!is_unsupported_kind(Place::Healthcheck, "ping"));
        assert!(!is_unsupported_kind(Place::Discovery, "nonsense"));
    }
}
