//! SIP wire handling: normalisation, rsip, the Head reader, TCP framing
//! and the raw error response must never panic, whatever the bytes.
#![no_main]

use gb28181::{sip::Head, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = wire::parse(data, wire::DEFAULT_MAX_MESSAGE) {
        if let Ok(h) = Head::parse(&m) {
            // What the gateway builds from it must parse back.
            let src = "127.0.0.1:5060".parse().unwrap();
            let r = gb28181::sip::response(&h, src, 400, "Bad Request", "t", &[], None);
            if h.status.is_none() {
                wire::parse(&r, usize::MAX).expect("our response parses");
            }
        }
    }
    let _ = wire::frame_len(data, wire::DEFAULT_MAX_MESSAGE);
    let _ = wire::raw_response(data, 400, "Bad Request");
});
