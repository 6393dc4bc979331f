//! Reading a configuration file: bounded in size, UTF-8, told by its format (or the one
//! asked for), and handed to that format's reader; every reader ends in [`Loaded`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    error, format, gobetween, haproxy, mixctl, samaritan, Config, ConfigError, ConfigErrors,
    Format, Requested, Warning,
};

/// A configuration that loaded, with the warnings found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The format it was read in.
    pub format: Format,
    pub config: Config,
    /// Accepted but worth changing: legacy GoBetween keys, ignored sections.
    pub warnings: Vec<Warning>,
    /// Where each `bind` is written (line and column), by its key path
    /// (`servers.web.bind`, `api.bind`, `metrics.bind`), for what is found about it after
    /// validation: a host name that does not resolve (see [`resolve_names`]).
    pub binds_at: BTreeMap<String, (usize, usize)>,
}

impl Loaded {
    /// What a reader ends with: its errors in file order (the same one reported twice is
    /// reported once), or, without any, the configuration with its warnings in file order
    /// and where each `bind` is written.
    pub(crate) fn from_reader(
        format: Format,
        config: Config,
        mut errors: Vec<ConfigError>,
        mut warnings: Vec<Warning>,
        binds_at: BTreeMap<String, (usize, usize)>,
    ) -> Result<Loaded, ConfigErrors> {
        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.col));
            errors.dedup();
            return Err(ConfigErrors(errors));
        }
        warnings.sort_by_key(|w| (w.line, w.col));
        warnings.dedup();
        Ok(Loaded {
            format,
            config,
            warnings,
            binds_at,
        })
    }
}

/// Reads and validates the configuration file at `path`, in the format its extension
/// and shape say (see [`Format::detect`]). Relative file paths in it are taken from the
/// file's directory (see [`config_dir`]).
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    load_as(path, None)
}

/// As [`load`], in the `requested` format when given (`--format`).
pub fn load_as(path: &Path, requested: Option<Requested>) -> Result<Loaded, ConfigErrors> {
    let unreadable = |message: String| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        col: 0,
        message,
    };
    let bytes = read_bounded(path, MAX_FILE_SIZE)
        .map_err(|e| unreadable(format!("cannot read the configuration: {e}")))?;
    let text = utf8(path, &bytes)?;
    let dir = config_dir(path)
        .map_err(|e| unreadable(format!("cannot tell the configuration's directory: {e}")))?;
    let format = match requested {
        Some(requested) => requested.format(text),
        None => Format::detect(path, text),
    };
    read(text, path, Some(&dir), format)
}

/// Reads and validates `text` in `format`, named `path` in messages, with relative file
/// paths taken from `dir` (absolute) when given. Every problem is reported, in file
/// order, not only the first.
pub fn read(
    text: &str,
    path: &Path,
    dir: Option<&Path>,
    format: Format,
) -> Result<Loaded, ConfigErrors> {
    let loaded = read_part(text, path, dir, format)?;
    let errors = super::checks::sections_at(&loaded.config, &loaded.binds_at, path);
    match errors.is_empty() {
        true => Ok(loaded),
        false => Err(ConfigErrors(errors)),
    }
}

/// As [`read`], without the rules between sections ([`super::checks::sections`]): one
/// part of a configuration put together afterwards (a fleet's shared configuration in
/// etcd, and a node's own sections), checked whole with [`super::validate`].
pub fn read_part(
    text: &str,
    path: &Path,
    dir: Option<&Path>,
    format: Format,
) -> Result<Loaded, ConfigErrors> {
    let loaded = match format {
        Format::Toml | Format::Json => {
            let src = error::Source::with_syntax(path, text, format == Format::Json);
            gobetween::read(src, dir).map_err(|errors| format::hint(errors, text, path, format))?
        }
        Format::Samaritan => samaritan::read(text, path, dir)?,
        Format::Mixctl => mixctl::read(text, path, dir)?,
        Format::Haproxy => haproxy::read(text, path, dir)?,
    };
    if !format.is_native() && loaded.config.api.as_ref().is_some_and(|api| api.persist) {
        let message = format!(
            "api.persist: Sluice writes only its own schema, not {}; convert the file \
             first (sluice convert -c FILE > sluice.toml) or turn persist off",
            format.title()
        );
        return Err(ConfigErrors(vec![ConfigError {
            path: path.to_path_buf(),
            line: 0,
            col: 0,
            message,
        }]));
    }
    Ok(loaded)
}

/// The largest configuration file read: far beyond any real one, and small enough that
/// `-c /dev/zero` is an error, not a process filling memory.
pub const MAX_FILE_SIZE: usize = 16 * 1024 * 1024;

/// The file at `path`, or an error if it holds more than `limit` bytes.
fn read_bounded(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path)?;
    file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(std::io::Error::other(format!(
            "the file is larger than {} MiB",
            limit >> 20
        )));
    }
    Ok(bytes)
}

/// `bytes` as text, or an error at the line and column of the first byte that is not
/// UTF-8.
pub(super) fn utf8<'b>(path: &Path, bytes: &'b [u8]) -> Result<&'b str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let bad = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
        error::Source::new(path, valid).error(
            valid.len(),
            format!("the file is not UTF-8 text: byte 0x{bad:02x} here"),
        )
    })
}

/// The absolute directory of the configuration file at `path`, which relative file paths
/// in it are taken from: they then mean the same whatever the working directory (`/`
/// under systemd), as nginx's do. Symbolic links are not followed, so a linked file
/// finds its certificates beside the link.
pub fn config_dir(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    Ok(absolute.parent().unwrap_or(&absolute).to_path_buf())
}
