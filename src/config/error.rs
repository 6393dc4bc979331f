//! Configuration errors and warnings, each printed as `FILE:LINE:COL: message`.
//!
//! [`Source`] turns the byte offsets the parsers and validators work with into the line
//! and column an editor shows (both 1-based, the column counted in characters).

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file, with its position.
///
/// `line` and `col` are 1-based. A file that cannot be read at all has `line == 0`, and
/// then prints as `FILE: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", located(path, *line, *col, message))]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    /// The dotted key path and what is wrong with it, e.g. `servers.web.bind: ...`.
    pub message: String,
}

/// Every error found in one configuration, in file order, printed one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

/// Something accepted but worth changing (a legacy GoBetween key, an ignored section),
/// printed as `FILE:LINE:COL: warning: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = format!("warning: {}", self.message);
        f.write_str(&located(&self.path, self.line, self.col, &message))
    }
}

fn located(path: &Path, line: usize, col: usize, message: &str) -> String {
    if line == 0 {
        format!("{}: {message}", path.display())
    } else {
        format!("{}:{line}:{col}: {message}", path.display())
    }
}

/// The text being loaded, its path, and which syntax it is in.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub json: bool,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    /// `path` picks the syntax: JSON for a `.json` extension, TOML otherwise.
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Source::with_syntax(path, text, json)
    }

    /// `text` in JSON when `json` holds, whatever `path` is called.
    pub fn with_syntax(path: &'a Path, text: &'a str, json: bool) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            path,
            text,
            json,
            line_starts,
        }
    }

    /// 1-based line and character column of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), col + 1)
    }

    /// Byte offset of a 1-based line and column as serde_json counts them (in bytes).
    pub fn offset(&self, line: usize, col: usize) -> usize {
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len());
        (start + col.saturating_sub(1)).min(self.text.len())
    }

    pub fn error(&self, offset: usize, message: String) -> ConfigError {
        let (line, col) = self.position(offset);
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            col,
            message,
        }
    }

    pub fn warning(&self, offset: usize, message: String) -> Warning {
        let (line, col) = self.position(offset);
        Warning {
            path: self.path.to_path_buf(),
            line,
            col,
            message,
        }
    }
}

/// `parent.key`, quoting a key that is not a bare TOML key (`servers."my app".bind`).
pub(crate) fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_odd_keys() {
        assert_eq!(join("", "servers"), "servers");
        assert_eq!(join("servers", "web-1"), "servers.web-1");
        assert_eq!(join("servers", "my app"), "servers.\"my app\"");
        assert_eq!(join("servers", "a.b"), "servers.\"a.b\"");
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let path = Path::new("a.toml");
        let src = Source::new(path, "ab\nµx = 1\n");
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(1), (1, 2));
        assert_eq!(src.position(3), (2, 1));
        // `x` follows the two-byte `µ`: byte 5, column 2.
        assert_eq!(src.position(5), (2, 2));
        assert_eq!(src.offset(2, 1), 3);
    }

    #[test]
    fn display_formats() {
        let src = Source::new(Path::new("c.toml"), "x\ny");
        let errors = ConfigErrors(vec![
            src.error(0, "a: bad".into()),
            src.error(2, "b: worse".into()),
        ]);
        assert_eq!(
            errors.to_string(),
            "c.toml:1:1: a: bad\nc.toml:2:1: b: worse"
        );
        assert_eq!(
            src.warning(2, "old key".into()).to_string(),
            "c.toml:2:1: warning: old key"
        );
        let unread = ConfigError {
            path: "missing.toml".into(),
            line: 0,
            col: 0,
            message: "cannot read".into(),
        };
        assert_eq!(unread.to_string(), "missing.toml: cannot read");
    }
}
