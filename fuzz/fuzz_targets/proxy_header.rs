//! PROXY protocol headers from arbitrary bytes: `parse` must never panic, and what it
//! calls a complete header must lie within the input and within the size cap.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::proxy::proxy_protocol::{parse, Parsed, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Parsed::Complete { len, .. } = parse(data) {
        assert!(len <= data.len(), "header of {len} bytes in {} bytes", data.len());
        assert!(len <= MAX_HEADER_LEN);
        // Parsing only the header gives the same header.
        assert!(matches!(parse(&data[..len]), Parsed::Complete { len: again, .. } if again == len));
    }
});
