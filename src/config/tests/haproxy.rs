//! HAProxy configurations: every file of `tests/configs/haproxy/valid` loads (with the
//! warnings of its `NAME.warnings`, if any), and every file of
//! `tests/configs/haproxy/invalid` fails with the exact messages of its `NAME.expected`
//! (`SLUICE_BLESS=1` rewrites them).

use std::path::Path;

use super::{invalid_fixtures, valid_fixtures};
use crate::config::dump::{self, Secrets};
use crate::config::{read, Format};

#[test]
fn valid_haproxy_configs_load_with_their_warnings() {
    valid_fixtures(
        "tests/configs/haproxy/valid",
        &["cfg"],
        &[Format::Haproxy],
        |path, loaded| {
            assert!(!loaded.config.servers.is_empty(), "{}", path.display());
            // Sluice's own schema says the same: what `persist` and `/dump` would write.
            let toml = dump::to_toml(&loaded.config, Secrets::Keep).expect("dump as TOML");
            let again =
                read(&toml, Path::new("dump.toml"), None, Format::Toml).unwrap_or_else(|e| {
                    panic!("{}: its dump does not load:\n{e}\n{toml}", path.display())
                });
            assert_eq!(again.config, loaded.config, "{}", path.display());
        },
    );
}

#[test]
fn invalid_haproxy_configs_fail_with_their_expected_messages() {
    invalid_fixtures("tests/configs/haproxy/invalid", &["cfg"]);
}

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
