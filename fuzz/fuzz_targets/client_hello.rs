//! TLS ClientHellos from arbitrary bytes: `parse` must never panic, and a server name it
//! returns is a lower-case host name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::proxy::client_hello::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Parsed::Complete(hello) = parse(data) {
        if let Some(name) = hello.server_name {
            assert!(!name.is_empty() && name.len() <= 253);
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
        }
    }
});
