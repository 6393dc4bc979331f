//! Samaritan and Mixctl YAML files from arbitrary bytes: reading must never panic or
//! overflow the stack, whatever the nesting or aliases.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::config::{read, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Samaritan, Format::Mixctl] {
        let _ = read(text, Path::new("fuzz.yaml"), None, format);
    }
});
