//! Reading a YAML tree against a schema, collecting every problem on the way: the
//! getters the Samaritan and Mixctl readers share.
//!
//! A [`Map`] hands out its keys as the schema asks for them; whatever is left when it
//! is [finished](Map::finish) is an unknown key, with "did you mean". A getter that
//! finds a wrong type or a bad value reports it at the value and returns `None`, so
//! that reading goes on and finds the next problem too. Key paths are written as the
//! file nests them: `servers[0].backends[1].weight`.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use super::{Entry, Node, Pos, Value};
use crate::config::duration::parse_duration;
use crate::config::error::{ConfigError, Warning};
use crate::config::gobetween::reader::edit_distance;

/// Where errors are collected.
pub(crate) struct Ctx<'p> {
    pub path: &'p Path,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
}

/// A value of the tree with its key path.
pub(crate) struct Field<'t> {
    pub path: String,
    /// Where its key is (a list item's own position).
    pub key_at: Pos,
    pub node: &'t Node,
}

impl Field<'_> {
    pub fn at(&self) -> Pos {
        self.node.at
    }
}

/// A mapping being read: keys are taken as the schema asks for them.
pub(crate) struct Map<'t> {
    pub path: String,
    pub at: Pos,
    entries: &'t [Entry],
    taken: Vec<bool>,
}

impl<'t> Map<'t> {
    /// `key` if present; it is taken.
    pub fn take(&mut self, key: &str) -> Option<Field<'t>> {
        let i = self.entries.iter().position(|e| e.key == key)?;
        self.taken[i] = true;
        Some(Field {
            path: self.child(key),
            key_at: self.entries[i].key_at,
            node: &self.entries[i].node,
        })
    }

    /// `key`, or an error at the mapping that it is missing.
    pub fn require(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<Field<'t>> {
        let field = self.take(key);
        if field.is_none() {
            ctx.error(self.at, &self.path, format!("missing key \"{key}\""));
        }
        field
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Reports every key not taken as unknown, suggesting the nearest of `known`.
    pub fn finish(self, ctx: &mut Ctx<'_>, known: &[&str]) {
        for (entry, _) in self.entries.iter().zip(&self.taken).filter(|(_, t)| !**t) {
            let key = &entry.key;
            let hint = match known.iter().min_by_key(|k| edit_distance(key, k)) {
                Some(near) if edit_distance(key, near) <= 2.max(key.len() / 4) => {
                    format!(" (did you mean \"{near}\"?)")
                }
                _ => format!("; expected one of {}", known.join(", ")),
            };
            let path = self.child(key);
            ctx.error(entry.key_at, &path, format!("unknown key \"{key}\"{hint}"));
        }
    }
}

impl<'p> Ctx<'p> {
    pub fn new(path: &'p Path) -> Self {
        Ctx {
            path,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn warn(&mut self, at: Pos, path: &str, message: impl Display) {
        self.warnings.push(Warning {
            path: self.path.to_path_buf(),
            line: at.line,
            col: at.col,
            message: format!("{path}: {message}"),
        });
    }

    pub fn error(&mut self, at: Pos, path: &str, message: impl Display) {
        let message = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        self.errors.push(ConfigError {
            path: self.path.to_path_buf(),
            line: at.line,
            col: at.col,
            message,
        });
    }

    fn expected(&mut self, f: &Field<'_>, what: &str) {
        let found = f.node.found();
        self.error(f.at(), &f.path, format!("expected {what}, found {found}"));
    }

    /// The root, or any value, as a mapping to read keys from.
    pub fn map<'t>(&mut self, f: &Field<'t>) -> Option<Map<'t>> {
        match &f.node.value {
            Value::Map(entries) => Some(Map {
                path: f.path.clone(),
                at: f.at(),
                entries,
                taken: vec![false; entries.len()],
            }),
            _ => {
                self.expected(f, "a mapping of keys to values");
                None
            }
        }
    }

    /// A list, each element with its path (`key[i]`).
    pub fn list<'t>(&mut self, f: &Field<'t>) -> Option<Vec<Field<'t>>> {
        match &f.node.value {
            Value::List(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, node)| Field {
                        path: format!("{}[{i}]", f.path),
                        key_at: node.at,
                        node,
                    })
                    .collect(),
            ),
            _ => {
                self.expected(f, "a list");
                None
            }
        }
    }

    /// A scalar's text, quoted or not (`name: 7` is the name "7"); not null.
    pub fn text<'t>(&mut self, f: &Field<'t>, what: &str) -> Option<&'t str> {
        match &f.node.value {
            Value::Scalar { text, .. } if !f.node.is_null() => Some(text),
            _ => {
                self.expected(f, what);
                None
            }
        }
    }

    /// A whole number in `min..=u32::MAX`, written unquoted.
    pub fn whole(&mut self, f: &Field<'_>, min: u32) -> Option<u32> {
        let number = match &f.node.value {
            Value::Scalar { text, plain: true } => text.parse::<i64>().ok(),
            _ => None,
        };
        let Some(n) = number else {
            self.expected(f, "a whole number");
            return None;
        };
        match u32::try_from(n) {
            Ok(n) if n >= min => Some(n),
            _ if n < i64::from(min) => {
                self.error(f.at(), &f.path, format!("must be at least {min}, got {n}"));
                None
            }
            _ => {
                let message = format!("must be at most {}, got {n}", u32::MAX);
                self.error(f.at(), &f.path, message);
                None
            }
        }
    }

    /// A Go-style duration (`"10s"`, `"1m30s"`) that is not zero.
    pub fn duration(&mut self, f: &Field<'_>) -> Option<Duration> {
        let text = self.text(f, "a duration such as 10s")?;
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.error(f.at(), &f.path, "must be more than 0");
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.error(f.at(), &f.path, message);
                None
            }
        }
    }

    /// A server's name, held to the model's rule of names as every reader holds it,
    /// with where it is written.
    pub fn server_name(&mut self, f: &Field<'_>) -> Option<(String, Pos)> {
        let name = self.parse(f, "a name", |name| {
            crate::config::checks::server_name(name).map(|()| name.to_owned())
        })?;
        Some((name, f.at()))
    }

    /// The scalar's text run through `parse`, whose error becomes the message.
    pub fn parse<T>(
        &mut self,
        f: &Field<'_>,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(f, what)?;
        match parse(text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(f.at(), &f.path, message);
                None
            }
        }
    }
}

/// The document's root, as a field with an empty path.
pub(crate) fn root(node: &Node) -> Field<'_> {
    Field {
        path: String::new(),
        key_at: node.at,
        node,
    }
}

/// `name` among `choices` (case and `-`/`_` aside), or the message listing them.
pub(crate) fn choice<T: Copy>(what: &str, name: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let wanted = name.to_ascii_lowercase().replace('-', "_");
    if let Some((_, value)) = choices.iter().find(|(n, _)| *n == wanted) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    Err(format!(
        "unknown {what} \"{name}\"; expected one of {}",
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str, read: impl FnOnce(&mut Ctx<'_>, Map<'_>)) -> Vec<String> {
        let root_node = super::super::parse(Path::new("t.yaml"), text).unwrap();
        let mut ctx = Ctx::new(Path::new("t.yaml"));
        let map = ctx.map(&root(&root_node)).unwrap();
        read(&mut ctx, map);
        ctx.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn numbers_durations_and_unknown_keys() {
        let errors = errors_of("w: x\nn: '3'\nd: 0s\nbalanse: 1\nzzz: 1\n", |ctx, mut m| {
            let w = m.take("w").unwrap();
            assert_eq!(ctx.whole(&w, 1), None);
            let n = m.take("n").unwrap();
            assert_eq!(ctx.whole(&n, 1), None);
            let d = m.take("d").unwrap();
            assert_eq!(ctx.duration(&d), None);
            m.require(ctx, "name");
            m.finish(ctx, &["balance", "name"]);
        });
        assert_eq!(
            errors,
            [
                "t.yaml:1:4: w: expected a whole number, found \"x\"",
                "t.yaml:2:4: n: expected a whole number, found \"3\"",
                "t.yaml:3:4: d: must be more than 0",
                "t.yaml:1:1: missing key \"name\"",
                "t.yaml:4:1: balanse: unknown key \"balanse\" (did you mean \"balance\"?)",
                "t.yaml:5:1: zzz: unknown key \"zzz\"; expected one of balance, name",
            ]
        );
    }

    #[test]
    fn choices_ignore_case_and_dashes() {
        let choices = [("round_robin", 1), ("leastconn", 2)];
        assert_eq!(choice("x", "Round-Robin", &choices), Ok(1));
        assert_eq!(
            choice("load_balance", "fastest", &choices),
            Err("unknown load_balance \"fastest\"; expected one of round_robin, leastconn".into())
        );
    }
}
