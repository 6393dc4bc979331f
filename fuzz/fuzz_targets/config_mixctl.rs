//! Mixctl rules files from arbitrary bytes, read as `-f mixctl` reads them: see
//! `reads_and_converts`.

#![no_main]

#[path = "reads_and_converts.rs"]
mod reads_and_converts;

use libfuzzer_sys::fuzz_target;
use sluice::config::Format;

fuzz_target!(|data: &[u8]| reads_and_converts::check(data, "fuzz.yaml", Format::Mixctl));
