//! MANSCDP bodies (XML in GB2312/GB18030/UTF-8): parse must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gb28181::manscdp::parse(data);
});
