//! API request bodies from arbitrary bytes, decoded as each route decodes them: a
//! server (POST/PUT `/servers/NAME`), backend options (POST/PATCH a backend) and the
//! restoring of redacted secrets. None may panic or overflow the stack; an error is
//! an answer, never a crash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sluice::api::decode::{parse_server, restore_secrets, BackendOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    match route % 3 {
        0 => {
            let _ = parse_server("fuzz", body, None);
        }
        1 => {
            let _ = BackendOptions::from_body(body, route & 0x80 != 0);
        }
        _ => {
            let old = json!({
                "discovery": {"kind": "json", "json_endpoint": "http://h/?token=t"},
                "healthcheck": {"kind": "redis", "redis_password": "p"},
            });
            if let Ok(restored) = restore_secrets(body, &old) {
                let _ = parse_server("fuzz", &restored, None);
            }
        }
    }
});
