//! The property every configuration reader's target checks: reading arbitrary bytes
//! never panics or overflows the stack, and what loads writes as Sluice's TOML
//! (`sluice convert`, `persist`) and loads back as the same configuration.

use std::path::Path;

use sluice::config::dump::{self, Secrets};
use sluice::config::Format;

pub fn check(data: &[u8], name: &str, format: Format) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = sluice::config::read(text, Path::new(name), None, format) {
        let converted = dump::to_toml(&loaded.config, Secrets::Keep)
            .unwrap_or_else(|e| panic!("a configuration that loaded does not convert: {e}"));
        let reloaded = sluice::config::parse(&converted, Path::new("converted.toml"))
            .unwrap_or_else(|e| panic!("a conversion does not load back:\n{e}\n{converted}"));
        assert_eq!(reloaded.config, loaded.config, "{converted}");
    }
}
