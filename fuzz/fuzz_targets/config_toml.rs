//! TOML configuration files (GoBetween's schema) from arbitrary bytes: reading must never
//! panic or overflow the stack, and what loads must write as TOML (`sluice convert`,
//! `persist`) and load back as the same configuration.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::config::dump::{self, Secrets};
use sluice::config::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let read = sluice::config::read(text, Path::new("fuzz.toml"), None, Format::Toml);
    if let Ok(loaded) = read {
        let converted = dump::to_toml(&loaded.config, Secrets::Keep)
            .unwrap_or_else(|e| panic!("a configuration that loaded does not convert: {e}"));
        let reloaded = sluice::config::parse(&converted, Path::new("converted.toml"))
            .unwrap_or_else(|e| panic!("a conversion does not load back:\n{e}\n{converted}"));
        assert_eq!(reloaded.config, loaded.config, "{converted}");
    }
});
