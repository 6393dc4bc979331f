//! Which reader a configuration is read with: the formats Sluice reads, told apart by a
//! file's extension and, failing that, by its shape; `--format` overrides both.
//!
//! Every reader produces the same validated [`Config`](super::Config); only GoBetween's
//! schema (TOML or JSON) is Sluice's own, the one `persist`, `/dump` and `sluice convert`
//! write.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::{ConfigError, ConfigErrors};

/// A configuration format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// GoBetween's schema in TOML: Sluice's own.
    Toml,
    /// GoBetween's schema in JSON.
    Json,
    /// Samaritan's YAML (`servers:` with `listen`, `backends`, `health_check`; or its
    /// own `static_services:`).
    Samaritan,
    /// Mixctl's rules file (`version`, `rules:` of `name`, `from`, `to`).
    Mixctl,
    /// HAProxy's configuration, `mode tcp`.
    Haproxy,
}

impl Format {
    /// Every format, in the order `--format` lists them.
    pub const ALL: [Format; 5] = [
        Format::Toml,
        Format::Json,
        Format::Samaritan,
        Format::Mixctl,
        Format::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Json => "json",
            Format::Samaritan => "samaritan",
            Format::Mixctl => "mixctl",
            Format::Haproxy => "haproxy",
        }
    }

    /// What a person calls it, for messages.
    pub fn title(self) -> &'static str {
        match self {
            Format::Toml => "GoBetween TOML",
            Format::Json => "GoBetween JSON",
            Format::Samaritan => "Samaritan YAML",
            Format::Mixctl => "Mixctl rules YAML",
            Format::Haproxy => "HAProxy",
        }
    }

    /// Sluice's own schema, which it can write back (`persist`).
    pub fn is_native(self) -> bool {
        matches!(self, Format::Toml | Format::Json)
    }

    /// The format of the file at `path` holding `text`: by extension (`.toml`, `.json`,
    /// `.yaml`/`.yml`, `.cfg`), else by shape. YAML is Mixctl's when its top level has
    /// `rules:`, Samaritan's otherwise.
    pub fn detect(path: &Path, text: &str) -> Format {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("toml") => Format::Toml,
            Some("json") => Format::Json,
            Some("yaml" | "yml") => yaml_kind(text),
            Some("cfg") => Format::Haproxy,
            _ => by_shape(text),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--format` value: a format's name, or `yaml` (Samaritan or Mixctl, told by the keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    Exactly(Format),
    Yaml,
}

impl Requested {
    /// The format of `text` as requested.
    pub fn format(self, text: &str) -> Format {
        match self {
            Requested::Exactly(format) => format,
            Requested::Yaml => yaml_kind(text),
        }
    }
}

impl FromStr for Requested {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let name = name.to_ascii_lowercase();
        if name == "yaml" || name == "yml" {
            return Ok(Requested::Yaml);
        }
        match Format::ALL.into_iter().find(|f| f.name() == name) {
            Some(format) => Ok(Requested::Exactly(format)),
            None => {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                Err(format!(
                    "unknown format \"{name}\": expected one of {}, or yaml",
                    names.join(", ")
                ))
            }
        }
    }
}

/// `errors` of a file read as `format` (GoBetween's schema, as `--format` asked or an
/// extension said), led by a line naming the format its shape suggests when that is
/// another one: so a HAProxy file given `-f toml` is not only pages of TOML errors.
pub(super) fn hint(
    mut errors: ConfigErrors,
    text: &str,
    path: &Path,
    format: Format,
) -> ConfigErrors {
    let shaped = by_shape(text);
    if shaped != format && !shaped.is_native() {
        let message = format!(
            "read as {} (by --format or the extension), but it looks like a {} \
             configuration: give --format {}",
            format.title(),
            shaped.title(),
            shaped.name()
        );
        let lead = ConfigError {
            path: path.to_path_buf(),
            line: 0,
            col: 0,
            message,
        };
        errors.0.insert(0, lead);
    }
    errors
}

/// Lines that say something: neither blank nor a comment (`#`, or `//` in none of ours).
fn meaningful(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim_start().is_empty() && !l.trim_start().starts_with('#'))
}

/// YAML with a top-level `rules:` is Mixctl's; any other, Samaritan's.
fn yaml_kind(text: &str) -> Format {
    let mixctl = meaningful(text).any(|l| l.starts_with("rules:"));
    if mixctl {
        Format::Mixctl
    } else {
        Format::Samaritan
    }
}

/// A file whose extension says nothing (`/etc/sluice/config`, `-c /dev/stdin`): JSON if
/// it opens with `{`; HAProxy's if its first line opens a section (`global`, `defaults`,
/// `frontend NAME`, `backend NAME`, `listen NAME`); YAML if it opens with a YAML
/// mapping key or list item; TOML otherwise.
fn by_shape(text: &str) -> Format {
    let Some(first) = meaningful(text).next() else {
        return Format::Toml;
    };
    let first = first.trim_start_matches('\u{feff}').trim_start();
    let word = first.split_whitespace().next().unwrap_or_default();
    let haproxy_section = ["global", "defaults", "frontend", "backend", "listen"];
    if first.starts_with('{') {
        Format::Json
    } else if haproxy_section.contains(&word) && !first.contains('=') {
        Format::Haproxy
    } else if first.starts_with("- ") || yaml_key(first) {
        yaml_kind(text)
    } else {
        Format::Toml
    }
}

/// `key:` or `key: value` at the start of a line, which TOML never writes.
fn yaml_key(line: &str) -> bool {
    let Some((key, _)) = line.split_once(':') else {
        return false;
    };
    !key.is_empty()
        && !key.contains('=')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_decides_then_shape() {
        let detect = |path: &str, text: &str| Format::detect(Path::new(path), text);
        assert_eq!(detect("a.toml", "servers:\n"), Format::Toml);
        assert_eq!(detect("a.JSON", ""), Format::Json);
        assert_eq!(detect("a.cfg", "[servers.a]\n"), Format::Haproxy);
        assert_eq!(
            detect("a.yaml", "servers:\n  - name: a\n"),
            Format::Samaritan
        );
        assert_eq!(detect("a.yml", "version: 0.1\nrules:\n"), Format::Mixctl);
        assert_eq!(
            detect("conf", "# lb\n\nfrontend web\n  bind :80\n"),
            Format::Haproxy
        );
        assert_eq!(detect("conf", "global\n    maxconn 100\n"), Format::Haproxy);
        assert_eq!(detect("conf", "  {\"servers\": {}}"), Format::Json);
        assert_eq!(detect("conf", "servers:\n- name: a\n"), Format::Samaritan);
        assert_eq!(detect("conf", "rules:\n- name: a\n"), Format::Mixctl);
        assert_eq!(detect("conf", "[servers.a]\nbind = \"x\"\n"), Format::Toml);
        assert_eq!(detect("conf", "global = 1\n"), Format::Toml);
        assert_eq!(detect("conf", ""), Format::Toml);
    }

    #[test]
    fn requested_names() {
        assert_eq!("TOML".parse(), Ok(Requested::Exactly(Format::Toml)));
        assert_eq!("haproxy".parse(), Ok(Requested::Exactly(Format::Haproxy)));
        assert_eq!("yml".parse(), Ok(Requested::Yaml));
        assert_eq!(Requested::Yaml.format("rules: []"), Format::Mixctl);
        let err = "ini".parse::<Requested>().unwrap_err();
        assert_eq!(
            err,
            "unknown format \"ini\": expected one of toml, json, samaritan, mixctl, haproxy, or yaml"
        );
    }
}
