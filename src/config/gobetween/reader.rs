//! Reading the raw tree against the schema, collecting every problem on the way.
//!
//! A [`Section`] hands out its keys one by one as the schema asks for them; whatever is
//! left when it is [finished](Section::finish) is an unknown key. The typed getters of
//! [`Ctx`] report a wrong type or a bad value and return `None`, so that validation goes
//! on and finds the next problem too.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{Entry, Node, Value};
use crate::config::duration::{parse_duration, parse_timeout};
use crate::config::error::{join, ConfigError, Source, Warning};

/// Where errors and warnings are collected.
pub(crate) struct Ctx<'s> {
    pub src: &'s Source<'s>,
    /// The configuration file's directory, which relative file paths are taken from;
    /// `None` (no file) keeps them as written.
    pub dir: Option<&'s Path>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
    /// The file has an `[acme]` section that is on: TLS servers may name `acme_hosts`.
    pub acme: bool,
}

/// One key of a section, taken by the schema.
pub(crate) struct Field<'t> {
    /// The dotted path, e.g. `servers.web.balance`, for messages.
    path: String,
    pub key: &'t str,
    /// Where the key starts; value errors point here, as in `FILE:7:1: servers.a.balance`.
    pub at: usize,
    pub node: &'t Node,
}

impl Field<'_> {
    /// The dotted path, e.g. `servers.web.balance`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A table being read: keys are taken as the schema asks for them.
pub(crate) struct Section<'t> {
    pub path: String,
    /// Where the table starts (its `[header]` in TOML), for "missing key" errors.
    pub at: usize,
    entries: &'t [Entry],
    taken: Vec<bool>,
    /// The name a legacy key answers to instead of its own.
    aliases: Vec<Option<&'static str>>,
}

impl<'t> Section<'t> {
    fn new(path: String, at: usize, entries: &'t [Entry]) -> Self {
        Section {
            path,
            at,
            entries,
            taken: vec![false; entries.len()],
            aliases: vec![None; entries.len()],
        }
    }

    /// The document's root table (`None` only if the root is not a table).
    pub fn root(node: &'t Node) -> Option<Self> {
        match &node.value {
            Value::Table(entries) => Some(Section::new(String::new(), node.at, entries)),
            _ => None,
        }
    }

    fn name(&self, i: usize) -> &str {
        self.aliases[i].unwrap_or(&self.entries[i].key)
    }

    /// Index of the untaken entry answering to `key`.
    fn index(&self, key: &str) -> Option<usize> {
        (0..self.entries.len()).find(|&i| !self.taken[i] && self.name(i) == key)
    }

    fn field(&mut self, i: usize) -> Field<'t> {
        self.taken[i] = true;
        let entry = &self.entries[i];
        Field {
            path: join(&self.path, &entry.key),
            key: &entry.key,
            at: entry.key_at,
            node: &entry.node,
        }
    }

    /// Takes `key` (or a legacy key renamed to it), if present and not taken yet.
    pub fn take(&mut self, key: &str) -> Option<Field<'t>> {
        let i = self.index(key)?;
        Some(self.field(i))
    }

    /// Every key not taken yet, in file order, now taken.
    pub fn take_all(&mut self) -> Vec<Field<'t>> {
        let untaken: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !self.taken[i])
            .collect();
        untaken.into_iter().map(|i| self.field(i)).collect()
    }

    /// Position of an untaken `key`, if present.
    pub fn find(&self, key: &str) -> Option<usize> {
        self.index(key).map(|i| self.entries[i].key_at)
    }

    /// Makes the untaken `old` answer to `new` from now on.
    pub fn rename(&mut self, old: &str, new: &'static str) {
        if let Some(i) = self.index(old) {
            self.aliases[i] = Some(new);
        }
    }

    /// Reports every key not taken as unknown, suggesting the nearest of `known`.
    pub fn finish(self, ctx: &mut Ctx<'_>, known: &[&str]) {
        for (i, entry) in self.entries.iter().enumerate() {
            if self.taken[i] {
                continue;
            }
            let key = &entry.key;
            let hint = match known.iter().min_by_key(|k| edit_distance(key, k)) {
                Some(near) if edit_distance(key, near) <= 2.max(key.len() / 4) => {
                    format!(" (did you mean \"{near}\"?)")
                }
                _ => format!("; expected one of {}", known.join(", ")),
            };
            let path = join(&self.path, key);
            ctx.error(entry.key_at, &path, format!("unknown key \"{key}\"{hint}"));
        }
    }
}

impl<'s> Ctx<'s> {
    pub fn new(src: &'s Source<'s>, dir: Option<&'s Path>) -> Self {
        Ctx {
            src,
            dir,
            errors: Vec::new(),
            warnings: Vec::new(),
            acme: false,
        }
    }

    pub fn error(&mut self, at: usize, path: &str, message: impl Display) {
        let error = self.src.error(at, format!("{path}: {message}"));
        self.errors.push(error);
    }

    pub fn warn(&mut self, at: usize, path: &str, message: impl Display) {
        let warning = self.src.warning(at, format!("{path}: {message}"));
        self.warnings.push(warning);
    }

    fn wrong_type(&mut self, f: &Field<'_>, at: usize, expected: &str, found: &Value) {
        let found = found.type_name(self.src.json);
        self.error(at, f.path(), format!("expected {expected}, found {found}"));
    }

    /// The field as a string; `what` describes it in a type error.
    pub fn str_as<'t>(&mut self, f: &Field<'t>, what: &str) -> Option<&'t str> {
        match &f.node.value {
            Value::Str(s) => Some(s),
            other => {
                self.wrong_type(f, f.at, what, other);
                None
            }
        }
    }

    pub fn str<'t>(&mut self, f: &Field<'t>) -> Option<&'t str> {
        self.str_as(f, "a string")
    }

    pub fn bool(&mut self, f: &Field<'_>) -> Option<bool> {
        match &f.node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.wrong_type(f, f.at, "true or false", other);
                None
            }
        }
    }

    /// A non-empty string.
    pub fn non_empty<'t>(&mut self, f: &Field<'t>) -> Option<&'t str> {
        let text = self.str(f)?;
        if text.is_empty() {
            self.error(f.at, f.path(), "must not be empty");
            return None;
        }
        Some(text)
    }

    /// A non-empty string naming a file, relative ones [resolved](resolve) against the
    /// configuration's directory.
    pub fn path(&mut self, f: &Field<'_>) -> Option<PathBuf> {
        let text = self.non_empty(f)?;
        Some(resolve(self.dir, text))
    }

    /// A program to run: one written as a relative path (`./check.sh`, `bin/list`) is
    /// taken from the configuration's directory like any file; a bare name (`curl`) is
    /// left for the `PATH` lookup. `None` if the result is not UTF-8 (a directory with
    /// such a name), reported.
    pub fn program(&mut self, at: usize, path: &str, text: &str) -> Option<String> {
        if !text.contains('/') {
            return Some(text.to_owned());
        }
        let resolved = resolve(self.dir, text);
        match resolved.into_os_string().into_string() {
            Ok(program) => Some(program),
            Err(os) => {
                let message = format!(
                    "{} is not UTF-8; give the program by an absolute path",
                    Path::new(&os).display()
                );
                self.error(at, path, message);
                None
            }
        }
    }

    /// A whole number in `min..=u32::MAX`.
    /// A port number, 1 to 65535.
    pub fn port(&mut self, f: &Field<'_>) -> Option<u16> {
        let n = self.u32_at_least(f, 1)?;
        match u16::try_from(n) {
            Ok(port) => Some(port),
            Err(_) => {
                self.error(f.at, f.path(), format!("must be at most 65535, got {n}"));
                None
            }
        }
    }

    pub fn u32_at_least(&mut self, f: &Field<'_>, min: u32) -> Option<u32> {
        let n = match &f.node.value {
            Value::Int(n) => *n,
            other => {
                self.wrong_type(f, f.at, "an integer", other);
                return None;
            }
        };
        match u32::try_from(n) {
            Ok(n) if n >= min => Some(n),
            Ok(_) | Err(_) if n < i64::from(min) => {
                self.error(f.at, f.path(), format!("must be at least {min}, got {n}"));
                None
            }
            _ => {
                let max = u32::MAX;
                self.error(f.at, f.path(), format!("must be at most {max}, got {n}"));
                None
            }
        }
    }

    /// The field's string run through `parse`, whose error becomes the message.
    pub fn parse<T>(
        &mut self,
        f: &Field<'_>,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.str_as(f, what)?;
        match parse(text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(f.at, f.path(), message);
                None
            }
        }
    }

    pub fn duration(&mut self, f: &Field<'_>) -> Option<Duration> {
        self.parse(f, "a duration string such as \"5s\"", parse_duration)
    }

    /// A timeout: `"0"` is `Some(None)`, no limit.
    pub fn timeout(&mut self, f: &Field<'_>) -> Option<Option<Duration>> {
        self.parse(f, "a duration string such as \"5s\"", parse_timeout)
    }

    /// One of a fixed set of names.
    pub fn choice<T: Copy>(&mut self, f: &Field<'_>, choices: &[(&str, T)]) -> Option<T> {
        let text = self.str(f)?;
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let message = format!(
            "unknown {} \"{text}\"; expected one of {}",
            f.key,
            names.join(", ")
        );
        self.error(f.at, f.path(), message);
        None
    }

    /// Where errors about a whole table point: its TOML `[header]`, else its key.
    pub fn table_at(&self, f: &Field<'_>) -> usize {
        let header = self.src.text.as_bytes().get(f.node.at) == Some(&b'[');
        if header {
            f.node.at
        } else {
            f.at
        }
    }

    /// The field as a table to read keys from.
    pub fn table<'t>(&mut self, f: &Field<'t>) -> Option<Section<'t>> {
        match &f.node.value {
            Value::Table(entries) => Some(Section::new(f.path.clone(), self.table_at(f), entries)),
            other => {
                let what = if self.src.json {
                    "an object"
                } else {
                    "a table"
                };
                self.wrong_type(f, f.at, what, other);
                None
            }
        }
    }

    /// A list of tables (`[[key]]` or `key = [{...}]`), each as a section with its path
    /// (`key[i]`). Elements of the wrong type are reported and skipped.
    pub fn tables<'t>(&mut self, f: &Field<'t>) -> Option<Vec<Section<'t>>> {
        let Value::Array(items) = &f.node.value else {
            self.wrong_type(f, f.at, "a list of tables", &f.node.value);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", f.path());
            match &item.value {
                Value::Table(entries) => out.push(Section::new(path, item.at, entries)),
                other => {
                    let found = other.type_name(self.src.json);
                    self.error(item.at, &path, format!("expected a table, found {found}"));
                }
            }
        }
        Some(out)
    }

    /// A list of strings, each with its position and its path (`key[i]`). Elements of
    /// the wrong type are reported and skipped.
    pub fn strings<'t>(&mut self, f: &Field<'t>) -> Option<Vec<(usize, String, &'t str)>> {
        let items = self.string_items(f)?;
        let path = f.path();
        Some(
            items
                .into_iter()
                .map(|(at, i, s)| (at, format!("{path}[{i}]"), s))
                .collect(),
        )
    }

    /// Like [`Ctx::strings`], each with its index in the list rather than its path: for
    /// lists long enough that a path per item would cost (`static_list`).
    pub fn string_items<'t>(&mut self, f: &Field<'t>) -> Option<Vec<(usize, usize, &'t str)>> {
        let Value::Array(items) = &f.node.value else {
            self.wrong_type(f, f.at, "a list of strings", &f.node.value);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match &item.value {
                Value::Str(s) => out.push((item.at, i, s.as_str())),
                other => {
                    let found = other.type_name(self.src.json);
                    let path = format!("{}[{i}]", f.path());
                    self.error(item.at, &path, format!("expected a string, found {found}"));
                }
            }
        }
        Some(out)
    }
}

/// `text` as a path: a relative one is joined to `dir` (the configuration's directory),
/// and `.` components are dropped (`./certs/a.pem` is `DIR/certs/a.pem`). `..` is kept:
/// dropping it would be wrong past a symbolic link. Without `dir` the path is as written.
pub(crate) fn resolve(dir: Option<&Path>, text: &str) -> PathBuf {
    let path = Path::new(text);
    match dir {
        Some(dir) if path.is_relative() => dir.join(path).components().collect(),
        _ => path.to_path_buf(),
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_join_the_directory() {
        let dir = Some(Path::new("/etc/sluice"));
        assert_eq!(resolve(dir, "a.pem"), Path::new("/etc/sluice/a.pem"));
        assert_eq!(
            resolve(dir, "./certs/./a.pem"),
            Path::new("/etc/sluice/certs/a.pem")
        );
        assert_eq!(resolve(dir, "../a.pem"), Path::new("/etc/sluice/../a.pem"));
        assert_eq!(resolve(dir, "/srv/a.pem"), Path::new("/srv/a.pem"));
        assert_eq!(resolve(None, "./a.pem"), Path::new("./a.pem"));
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("blance", "balance"), 1);
        assert_eq!(edit_distance("bind", "bind"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
