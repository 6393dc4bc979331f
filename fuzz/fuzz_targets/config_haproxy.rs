//! HAProxy configuration files from arbitrary bytes: reading must never panic, and what
//! loads must dump in Sluice's own schema and load back the same.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::config::dump::{self, Secrets};
use sluice::config::Format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(loaded) = sluice::config::read(text, Path::new("fuzz.cfg"), None, Format::Haproxy) {
        let again = dump::to_json(&loaded.config, Secrets::Keep).to_string();
        let reloaded = sluice::config::parse(&again, Path::new("dump.json"))
            .unwrap_or_else(|e| panic!("a dump does not load back:\n{e}\n{again}"));
        assert_eq!(reloaded.config, loaded.config, "{again}");
    }
});
