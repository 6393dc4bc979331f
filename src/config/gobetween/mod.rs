//! The reader of GoBetween's TOML (or JSON) schema onto the model: a file's text in,
//! a [`Config`](crate::config::Config) out, every problem reported as
//! `FILE:LINE:COL: message`, not only the first.
//!
//! Reading takes two stages. The text is read into a tree that keeps every key's and
//! value's position; the tree is then walked against the schema, each section by the
//! module named for it, filling in defaults, resolving names and parsing values. A value
//! that fails is reported and replaced by its default so that the walk goes on; the
//! result is kept only if nothing was reported. The rules that need every server known
//! are the model's own (`checks`), run last.
//!
//! - `file`: TOML or JSON into one tree that keeps every key's and value's position.
//! - `reader`: the typed, error-collecting getters every section reads with (`Ctx`,
//!   `Section`, `Field`); a key left unread is an unknown key, with "did you mean".
//! - `server`: the top level, `[logging]`, `[defaults]` and each `[servers.NAME]`, with
//!   its `udp`, `sni` and PROXY protocol sections.
//! - `balance`: a server's `balance` and `hash_balance_factor`; `failover`: its
//!   failure-handling keys and `outlier` section.
//! - `sections`: a server's `access` rules; `limits`: its client protection keys.
//! - `discovery`: `[servers.NAME.discovery]`, each kind's keys; `registries`: those of
//!   Consul, etcd and Docker, with their credentials and client TLS.
//! - `health`: `[servers.NAME.healthcheck]`, each kind's keys; `probe`: the probe kind's.
//! - `tls`: `[servers.NAME.tls]` and `[backends_tls]`, their files loaded as they are read.
//! - `admin`: `[api]` and `[metrics]`; `acme`: `[acme]`; `bgp`: `[bgp]` and a server's
//!   `announce`.
//! - `legacy`: GoBetween's legacy keys (warnings) and unsupported features (errors).
//!
//! The modules here import the model (`crate::config`); the model imports nothing from
//! here, and `config` re-exports the entry points below.

pub(super) mod acme;
pub(super) mod admin;
mod balance;
pub(super) mod bgp;
pub(super) mod discovery;
pub(super) mod failover;
mod file;
pub(super) mod health;
pub(super) mod legacy;
pub(super) mod limits;
mod probe;
pub(super) mod reader;
mod registries;
pub(super) mod sections;
pub(super) mod server;
pub(super) mod tls;

use std::path::Path;

use super::error::{self, ConfigErrors};
use super::{Format, Loaded};

/// Validates a configuration given as text with no file of its own (a changed
/// configuration checked before it is applied, whose paths are absolute already): file
/// paths in it are kept as written. `path` names it in messages, and its extension picks the syntax: JSON for
/// `.json`, TOML otherwise.
///
/// Every problem is reported, in file order, not only the first.
pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigErrors> {
    parse_in(text, path, None)
}

/// As [`parse`], with relative file paths taken from `dir` (absolute) when given, as
/// [`load`] does.
pub fn parse_in(text: &str, path: &Path, dir: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let loaded = read(error::Source::new(path, text), dir)?;
    let errors = super::checks::sections_at(&loaded.config, &loaded.binds_at, path);
    match errors.is_empty() {
        true => Ok(loaded),
        false => Err(ConfigErrors(errors)),
    }
}

/// Reads `src` (TOML, or JSON as its `json` says) with relative file paths taken from
/// `dir` when given.
pub(crate) fn read(src: error::Source<'_>, dir: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let root = file::parse(&src).map_err(ConfigErrors)?;
    let mut ctx = reader::Ctx::new(&src, dir);
    let (config, binds_at) = server::config(&mut ctx, &root);
    let binds_at = binds_at
        .into_iter()
        .map(|(name, at)| (name, src.position(at)))
        .collect();
    let format = if src.json { Format::Json } else { Format::Toml };
    Loaded::from_reader(format, config, ctx.errors, ctx.warnings, binds_at)
}
