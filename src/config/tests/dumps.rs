//! The dump (`GET /dump`, `persist`, the API's server resources) of every example and
//! valid fixture, and of the inputs in `dumps/`, with secrets kept and redacted, against
//! the exact text in `dumps/NAME.dump`. After an intended change of the written schema,
//! `SLUICE_BLESS=1 cargo test --lib config` rewrites those files; review the diff.
//!
//! `dumps/a.pem`, `b.pem`, `ca.pem` and the keys beside them are throwaway self-signed
//! certificates made for these tests: loading a TLS section reads its files.

use std::path::Path;

use super::files;
use crate::config::dump::{self, Secrets};
use crate::config::parse;

/// Everything written for the configuration at `relative`: JSON and TOML, secrets kept
/// and redacted.
fn dumps_of(relative: &Path) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{relative:?}: {e}"));
    // Paths stay as written (no directory to resolve them against), so the dumps are the
    // same wherever the crate is checked out.
    let config = parse(&text, relative)
        .unwrap_or_else(|e| panic!("{relative:?}: {e}"))
        .config;
    let mut out = String::new();
    for secrets in [Secrets::Keep, Secrets::Redact] {
        let json = dump::to_json(&config, secrets);
        for (name, server) in &config.servers {
            let written = &json["servers"][name];
            assert_eq!(
                &dump::server_value(server, secrets),
                written,
                "{relative:?}: server {name}"
            );
            // Discovery kinds are named twice: by `kind()` and by serde's renames (a
            // server with no backend writes none).
            if !server.discovery.is_empty_list() {
                assert_eq!(written["discovery"]["kind"], server.discovery.kind());
            }
        }
        let pretty = serde_json::to_string_pretty(&json).unwrap_or_else(|e| panic!("{e}"));
        let toml = dump::to_toml(&config, secrets).unwrap_or_else(|e| panic!("{e}"));
        if secrets == Secrets::Keep {
            let back = parse(&toml, Path::new("dump.toml"))
                .unwrap_or_else(|e| panic!("{relative:?}: the dump does not parse: {e}"));
            assert_eq!(
                back.config, config,
                "{relative:?}: the dump reads back differently"
            );
        }
        out.push_str(&format!(
            "=== JSON, {secrets:?}\n{pretty}\n=== TOML, {secrets:?}\n{toml}"
        ));
    }
    out
}

#[test]
fn dumps_are_written_exactly_as_before() {
    let mut inputs = files("examples", &["toml", "json"]);
    inputs.extend(files("tests/configs/valid", &["toml", "json"]));
    inputs.extend(files("src/config/tests/dumps", &["toml"]));
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    for input in inputs {
        let actual = dumps_of(&input);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/tests/dumps");
        let stem = input.file_stem().unwrap_or_default().to_string_lossy();
        let extension = input.extension().unwrap_or_default().to_string_lossy();
        let expected_path = dir.join(format!("{stem}.{extension}.dump"));
        if bless {
            std::fs::write(&expected_path, &actual)
                .unwrap_or_else(|e| panic!("{expected_path:?}: {e}"));
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{expected_path:?}: {e}"));
        assert!(
            actual == expected,
            "{input:?} is dumped differently from {expected_path:?}:\n{actual}"
        );
    }
}
