//! HAProxy configurations: every file of `tests/configs/haproxy/valid` loads (with the
//! warnings of its `NAME.warnings`, if any), and every file of
//! `tests/configs/haproxy/invalid` fails with the exact messages of its `NAME.expected`
//! (`SLUICE_BLESS=1` rewrites them).

use std::path::{Path, PathBuf};

use super::{crate_relative, files};
use crate::config::dump::{self, Secrets};
use crate::config::{config_dir, read, ConfigErrors, Format, Loaded};

const VALID: &str = "tests/configs/haproxy/valid";
const INVALID: &str = "tests/configs/haproxy/invalid";

/// Reads a fixture of the crate as HAProxy's format, naming it by its relative path.
fn read_fixture(relative: &Path) -> Result<Loaded, ConfigErrors> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    let dir = config_dir(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    assert_eq!(Format::detect(relative, &text), Format::Haproxy);
    read(&text, relative, Some(&dir), Format::Haproxy)
}

/// `path` with `extension`, from the crate root.
fn beside(path: &Path, extension: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .with_extension(extension)
}

#[test]
fn valid_haproxy_configs_load_with_their_warnings() {
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    for path in files(VALID, &["cfg"]) {
        let loaded = match read_fixture(&path) {
            Ok(loaded) => loaded,
            Err(errors) => panic!("{} should load:\n{errors}", path.display()),
        };
        assert_eq!(loaded.format, Format::Haproxy);
        assert!(!loaded.config.servers.is_empty(), "{}", path.display());
        // Sluice's own schema says the same: what `persist` and `/dump` would write.
        let toml = dump::to_toml(&loaded.config, Secrets::Keep).expect("dump as TOML");
        let again = read(&toml, Path::new("dump.toml"), None, Format::Toml)
            .unwrap_or_else(|e| panic!("{}: its dump does not load:\n{e}\n{toml}", path.display()));
        assert_eq!(again.config, loaded.config, "{}", path.display());
        let warnings_path = beside(&path, "warnings");
        let actual: String = loaded.warnings.iter().map(|w| format!("{w}\n")).collect();
        if bless && !actual.is_empty() {
            std::fs::write(&warnings_path, &actual).expect("write .warnings");
            continue;
        }
        let expected = std::fs::read_to_string(&warnings_path).unwrap_or_default();
        assert_eq!(actual, expected, "warnings of {}", path.display());
    }
}

#[test]
fn invalid_haproxy_configs_fail_with_their_expected_messages() {
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failures = Vec::new();
    for path in files(INVALID, &["cfg"]) {
        let expected_path = beside(&path, "expected");
        let actual = match read_fixture(&path) {
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

/// The fenced block of `language` after `heading` in the README.
fn readme_block(readme: &str, heading: &str, language: &str) -> String {
    let (_, section) = readme.split_once(heading).expect("the README's section");
    let (_, block) = section
        .split_once(&format!("```{language}\n"))
        .unwrap_or_else(|| panic!("a {language} block after {heading}"));
    block
        .split_once("```")
        .expect("a closed block")
        .0
        .to_owned()
}

#[test]
fn the_readmes_haproxy_example_is_its_toml_translation() {
    let readme = include_str!("../../../README.md");
    let heading = "### Coming from HAProxy";
    let haproxy = readme_block(readme, heading, "haproxy");
    let toml = readme_block(readme, heading, "toml");
    let from_haproxy = read(&haproxy, Path::new("README.cfg"), None, Format::Haproxy)
        .unwrap_or_else(|e| panic!("{e}"));
    let from_toml =
        read(&toml, Path::new("README.toml"), None, Format::Toml).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        from_haproxy.warnings.is_empty(),
        "{:?}",
        from_haproxy.warnings
    );
    assert_eq!(from_haproxy.config, from_toml.config);
}
