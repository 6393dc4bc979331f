//! The reader of Mixctl's rules file onto the model: each rule becomes a TCP server of
//! the same name.
//!
//! ```yaml
//! version: 0.1
//! rules:
//!   - name: rpi-k3s
//!     from: 127.0.0.1:6443
//!     to:
//!       - 192.168.1.19:6443
//!       - 192.168.1.21:6443:3     # a weight, as `sluice tcp --targets` takes
//! ```
//!
//! Mixctl picks a target at random for each connection and gives a dial 1.5 s (its
//! `-t` default); the servers read here do the same (`random`, weighted when a target
//! has a weight). Every problem is reported, at its line and column, with its key path
//! (`rules[0].to[1]`).

use std::path::Path;
use std::time::Duration;

use super::bind::parse_bind;
use super::error::{join, ConfigErrors};
use super::yaml::reader::{self, Ctx, Field};
use super::yaml::{self, Pos};
use super::{checks, Config, DiscoveryConfig, Format, Loaded, ServerConfig};
use crate::backend::BackendSpec;
use crate::balance::BalanceKind;

const TOP_KEYS: &[&str] = &["version", "rules"];
const RULE_KEYS: &[&str] = &["name", "from", "to"];

/// The versions of the rules file there are.
const VERSIONS: &[&str] = &["0.1"];

/// How long Mixctl gives a dial to a target (its `-t` flag's default).
pub const DIAL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Reads Mixctl's rules `text`, named `path` in messages. `dir` is unused: nothing in
/// the format names a file.
pub(crate) fn read(text: &str, path: &Path, _dir: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let root = yaml::parse(path, text).map_err(ConfigErrors)?;
    let mut ctx = Ctx::new(path);
    let mut config = Config::default();
    // Each rule read, in file order: its name, index and where its `from` is.
    let mut read: Vec<(String, usize, Pos)> = Vec::new();
    if let Some(mut top) = ctx.map(&reader::root(&root)) {
        if let Some(f) = top.take("version") {
            version(&mut ctx, &f);
        }
        if let Some(list) = top.require(&mut ctx, "rules") {
            let items = ctx.list(&list).unwrap_or_default();
            if items.is_empty() && !list.node.is_null() {
                ctx.error(list.at(), "rules", "empty; give at least one rule");
            }
            for (i, item) in items.iter().enumerate() {
                let Some((name, name_at, server, from_at)) = rule(&mut ctx, item) else {
                    continue;
                };
                if let Some((_, first, _)) = read.iter().find(|(n, ..)| *n == name) {
                    let message = format!("\"{name}\" is also the name of rules[{first}]");
                    ctx.error(name_at, &format!("{}.name", item.path), message);
                    continue;
                }
                read.push((name.clone(), i, from_at));
                config.servers.insert(name, server);
            }
        }
        top.finish(&mut ctx, TOP_KEYS);
    }
    let in_file_order = read.iter().map(|(name, ..)| name.as_str());
    for problem in checks::typed(&config, in_file_order) {
        // Target lists were checked as they were read, in this file's words.
        let Some(&(_, i, at)) = read.iter().find(|(name, ..)| *name == problem.server) else {
            continue;
        };
        if problem.key.ends_with(".bind") {
            let message = problem.message.replace("servers.", "rule ");
            ctx.error(at, &format!("rules[{i}].from"), message);
        }
    }
    let binds_at = read
        .into_iter()
        .map(|(name, _, at)| {
            (
                format!("{}.bind", join("servers", &name)),
                (at.line, at.col),
            )
        })
        .collect();
    Loaded::from_reader(Format::Mixctl, config, ctx.errors, ctx.warnings, binds_at)
}

/// `version: 0.1` (a number to YAML, or the same quoted); another is a warning.
fn version(ctx: &mut Ctx<'_>, f: &Field<'_>) {
    let Some(text) = ctx.text(f, "a version such as 0.1") else {
        return;
    };
    if !VERSIONS.contains(&text) {
        // Mixctl itself never reads the version; the rules are read as 0.1's.
        let message = format!(
            "unknown version \"{text}\"; read as {}",
            VERSIONS.join(", ")
        );
        ctx.warn(f.at(), &f.path, message);
    }
}

/// One of `rules:`: its name (and where it is written), the server, and where its
/// `from` is; `None` if anything in it was reported.
fn rule(ctx: &mut Ctx<'_>, item: &Field<'_>) -> Option<(String, Pos, ServerConfig, Pos)> {
    let mut m = ctx.map(item)?;
    let errors_before = ctx.errors.len();
    let name = m.require(ctx, "name").and_then(|f| ctx.server_name(&f));
    let from = m.require(ctx, "from").and_then(|f| {
        let bind = ctx.parse(&f, "an address such as 127.0.0.1:6443", parse_bind)?;
        Some((bind, f.at()))
    });
    let to = m.require(ctx, "to").and_then(|f| targets(ctx, &f));
    m.finish(ctx, RULE_KEYS);
    if ctx.errors.len() > errors_before {
        return None;
    }
    let ((name, name_at), (bind, from_at), backends) = (name?, from?, to?);
    let server = ServerConfig {
        bind: bind.into(),
        balance: BalanceKind::Random,
        backend_connection_timeout: Some(DIAL_TIMEOUT),
        ..ServerConfig::new(
            ([0, 0, 0, 0], 0).into(),
            DiscoveryConfig::Static {
                backends: backends.into(),
            },
        )
    };
    Some((name, name_at, server, from_at))
}

/// `to:`, a list of `host:port` or `host:port:weight`; none twice, at least one.
fn targets(ctx: &mut Ctx<'_>, f: &Field<'_>) -> Option<Vec<BackendSpec>> {
    let items = ctx.list(f)?;
    if items.is_empty() {
        ctx.error(f.at(), &f.path, "empty; a rule needs at least one target");
        return None;
    }
    let mut out: Vec<BackendSpec> = Vec::new();
    let mut complete = true;
    for item in &items {
        let target = ctx.parse(item, "host:port", target);
        let Some(target) = target else {
            complete = false;
            continue;
        };
        let key = target.key().to_ascii_lowercase();
        if let Some(first) = out.iter().position(|b| b.key().to_ascii_lowercase() == key) {
            let message = format!(
                "duplicate target {} (also {}[{first}])",
                target.key(),
                f.path
            );
            ctx.error(item.at(), &item.path, message);
            complete = false;
            continue;
        }
        out.push(target);
    }
    complete.then_some(out)
}

/// A target of a rule (or of `sluice tcp --targets`): `host:port`, `host:port:weight`,
/// `[v6]:port` or `[v6]:port:weight`.
pub fn target(text: &str) -> Result<BackendSpec, String> {
    let bad = || format!("\"{text}\" is not host:port or host:port:weight");
    if text.contains(char::is_whitespace) {
        return Err(bad());
    }
    let (address, weight) = match text.rsplit_once(':') {
        // `host:port:weight`: two colons outside brackets.
        Some((address, weight))
            if address
                .rsplit_once(']')
                .map_or(address, |(_, p)| p)
                .contains(':') =>
        {
            (address, Some(weight))
        }
        _ => (text, None),
    };
    let mut spec: BackendSpec = address.parse()?;
    if let Some(weight) = weight {
        spec.weight = match weight.parse::<u32>() {
            Ok(0) => return Err(format!("\"{text}\": weight must be at least 1")),
            Ok(weight) => weight,
            Err(_) => return Err(bad()),
        };
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_with_weights() {
        let t = target("10.0.0.2:3000:3").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.weight), ("10.0.0.2", 3000, 3));
        let t = target("10.0.0.2:3000").unwrap();
        assert_eq!(t.weight, 1);
        let t = target("[::1]:80:7").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.weight), ("::1", 80, 7));
        let t = target("[::1]:80").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.weight), ("::1", 80, 1));
        assert!(target("10.0.0.1").is_err());
        assert!(target("10.0.0.1:80:x").is_err());
        assert!(target("10.0.0.1:80:0").is_err());
        assert!(target("a b:80").is_err());
    }

    #[test]
    fn the_version_is_a_number_or_a_string() {
        for text in ["version: 0.1\n", "version: '0.1'\n"] {
            let rules =
                format!("{text}rules:\n- name: a\n  from: 127.0.0.1:0\n  to: [127.0.0.1:1]\n");
            read(&rules, Path::new("r.yaml"), None).unwrap();
        }
    }
}
