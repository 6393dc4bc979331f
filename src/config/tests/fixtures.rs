//! Reading the crate's fixture files as `sluice -c` does, and checking whole fixture
//! directories: valid files against their `NAME.warnings`, invalid ones against their
//! `NAME.expected` (`SLUICE_BLESS=1` rewrites both).

use std::path::{Path, PathBuf};

use crate::config::{config_dir, parse_in, read, ConfigErrors, Format, Loaded};

/// Files of `dir` (relative to the crate root) with one of `extensions`, sorted.
pub(super) fn files(dir: &str, extensions: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
        })
        .filter_map(|p| p.file_name().map(|name| Path::new(dir).join(name)))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {extensions:?} files in {dir}");
    files
}

/// Parses a file of the crate, naming it by its relative path; file paths in it are taken
/// from its directory, as [`load`] does.
pub(super) fn parse_file(relative: &Path) -> Result<Loaded, ConfigErrors> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let bytes = std::fs::read(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    let text = super::load::utf8(relative, &bytes)?;
    let dir = config_dir(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    parse_in(text, relative, Some(&dir))
}

/// Reads a file of the crate in `format`, as [`load_as`] does, naming it by its
/// relative path.
pub(super) fn read_file(relative: &Path, format: Format) -> Result<Loaded, ConfigErrors> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let bytes = std::fs::read(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    let text = super::load::utf8(relative, &bytes)?;
    let dir = config_dir(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    read(text, relative, Some(&dir), format)
}

/// Every file of `dir` with one of `extensions`, read as `sluice -c` reads it (its
/// format told by its extension and shape, which must be `format`), loads with exactly
/// the warnings of its `NAME.warnings` (none without one); `also` checks more of each.
/// `SLUICE_BLESS=1` rewrites the `.warnings` files.
pub(super) fn valid_fixtures(
    dir: &str,
    extensions: &[&str],
    format: &[Format],
    also: impl Fn(&Path, &Loaded),
) {
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    for path in files(dir, extensions) {
        let loaded = match load_file(&path) {
            Ok(loaded) => loaded,
            Err(errors) => panic!("{} should load:\n{errors}", path.display()),
        };
        assert!(
            format.contains(&loaded.format),
            "{} read as {}",
            path.display(),
            loaded.format
        );
        also(&path, &loaded);
        let warnings_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(&path)
            .with_extension("warnings");
        let expected = std::fs::read_to_string(&warnings_path).unwrap_or_default();
        let actual: String = loaded.warnings.iter().map(|w| format!("{w}\n")).collect();
        if bless && !actual.is_empty() {
            std::fs::write(&warnings_path, &actual).expect("write .warnings");
            continue;
        }
        assert_eq!(actual, expected, "warnings of {}", path.display());
    }
}

/// Every file of `dir` with one of `extensions`, read as `sluice -c` reads it, fails with
/// exactly the messages of its `NAME.expected` (`SLUICE_BLESS=1` rewrites those).
pub(super) fn invalid_fixtures(dir: &str, extensions: &[&str]) {
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failures = Vec::new();
    for path in files(dir, extensions) {
        let expected_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(&path)
            .with_extension("expected");
        let actual = match load_file(&path) {
            Ok(_) => "(loaded without error)\n".to_owned(),
            Err(errors) => crate_relative(&format!("{errors}\n")),
        };
        if bless {
            std::fs::write(&expected_path, &actual).expect("write .expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Reads a file of the crate as `sluice -c` does: its format told by its extension and
/// shape, relative paths in it taken from its directory; named by its relative path.
fn load_file(relative: &Path) -> Result<Loaded, ConfigErrors> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let bytes = std::fs::read(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    let text = super::load::utf8(relative, &bytes)?;
    read_file(relative, Format::detect(relative, text))
}

/// `text` with the crate's absolute directory written `<crate>`, so that `.expected`
/// files showing resolved paths hold wherever the crate is checked out.
pub(super) fn crate_relative(text: &str) -> String {
    text.replace(concat!(env!("CARGO_MANIFEST_DIR"), "/"), "<crate>/")
}
