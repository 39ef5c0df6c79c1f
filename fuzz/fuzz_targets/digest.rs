//! Authorization / WWW-Authenticate parameter parsing must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = gb28181::digest::Credentials::parse(s);
        let _ = gb28181::digest::Challenge::parse(s);
    }
});
