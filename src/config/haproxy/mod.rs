//! The reader of HAProxy's configuration (`mode tcp`) onto the model: a file's text in, a
//! [`Config`](crate::config::Config) out, every problem reported as `FILE:LINE:COL:
//! message` with the section and directive it is about, not only the first.
//!
//! Reading takes three stages. The text is cut into lines of words (`words`), each
//! word keeping its position. The lines are read section by section into plain
//! records of what each proxy says (`sections`, with `directives` for one line of a
//! proxy, `server` for `server` and `default-server`, `rules` for `acl`,
//! `tcp-request` and `use_backend`, `health` for the `option *-check` family and
//! `tcp-check`/`http-check`); a proxy starts from the `defaults` section before it, as
//! in HAProxy. Then each backend becomes a pool of servers (`pool`), `build` turns each
//! frontend (or `listen`) into a Sluice server in front of the pools it uses, and the
//! model's own rules (`checks::typed`) run last.
//!
//! What Sluice does not implement is never dropped silently: a directive with no meaning
//! at layer 4 (`mode http`, `http-request`, …) or one Sluice lacks is an error naming
//! it; one that is harmless (`log`, `daemon`, …) is a warning saying what Sluice does
//! instead. The README's "Coming from HAProxy" lists what maps to what.
//!
//! - `words`: HAProxy's tokenizer (quotes, escapes, comments), with positions.
//! - `values`: times, numbers, `bind` and `server` addresses.
//! - `sections`: `global`, `defaults`, `frontend`, `backend`, `listen`; `global`: what
//!   Sluice takes from `global`.
//! - `directives`: one line of a proxy section, into its settings; `keywords`: the
//!   directives sorted without being read (HTTP's, harmless ones).
//! - `server`: `server` and `default-server` lines and their options.
//! - `rules`: `acl`, `tcp-request` and `use_backend`, into access rules and SNI routes.
//! - `health`: the check a backend's options and `tcp-check` rules describe.
//! - `pool`: a backend's servers and the settings Sluice holds per pool.
//! - `build`: proxies into Sluice servers.

mod build;
mod directives;
mod global;
mod health;
mod keywords;
mod pool;
mod rules;
mod sections;
mod server;
mod values;
mod words;

use std::fmt::Display;
use std::path::Path;

use super::error::{ConfigError, ConfigErrors, Source, Warning};
use super::{Format, Loaded};

/// Where errors and warnings are collected.
pub(super) struct Ctx<'s> {
    pub src: &'s Source<'s>,
    /// The configuration file's directory, which relative file paths are taken from;
    /// `None` keeps them as written.
    pub dir: Option<&'s Path>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
}

impl Ctx<'_> {
    pub fn error(&mut self, at: usize, message: impl Display) {
        self.errors.push(self.src.error(at, message.to_string()));
    }

    pub fn warn(&mut self, at: usize, message: impl Display) {
        self.warnings
            .push(self.src.warning(at, message.to_string()));
    }
}

/// Reads `text`, an HAProxy configuration named `path` in messages, with relative file
/// paths taken from `dir` (absolute) when given.
pub(crate) fn read(text: &str, path: &Path, dir: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let src = Source::with_syntax(path, text, false);
    let mut ctx = Ctx {
        src: &src,
        dir,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let (lines, problems) = words::lines(text);
    for (at, message) in problems {
        ctx.error(at, message);
    }
    let file = sections::read(&mut ctx, &lines);
    let (config, binds_at) = build::config(&mut ctx, &file);
    let binds_at = binds_at
        .into_iter()
        .map(|(key, at)| (key, src.position(at)))
        .collect();
    Loaded::from_reader(Format::Haproxy, config, ctx.errors, ctx.warnings, binds_at)
}

#[cfg(test)]
mod tests;
