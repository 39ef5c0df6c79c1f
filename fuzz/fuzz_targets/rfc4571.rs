//! RFC 4571 / interleaved TCP framing: never panics, packets respect the
//! limit, a failed decoder stays failed, and how the bytes are cut into
//! reads changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::framing::Rfc4571Decoder;

/// Packets (with their channel) until the stream ends or fails.
fn decode(stream: &[u8], max: usize, step: usize) -> (Vec<(Option<u8>, Vec<u8>)>, bool) {
    let mut d = Rfc4571Decoder::with_max_len(max);
    let mut pkts = Vec::new();
    for c in stream.chunks(step) {
        d.push(c);
        loop {
            match d.next_packet() {
                Ok(Some(p)) => {
                    assert!(!p.is_empty() && p.len() <= max);
                    pkts.push((d.last_channel(), p));
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(d.next_packet().is_err(), "a failed decoder stays failed");
                    return (pkts, true);
                }
            }
        }
        assert!(d.buffered() < 4 + max);
    }
    (pkts, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    // Control byte: bit 0 selects an 8192-byte limit, the rest the read size.
    let max = if ctl & 1 != 0 { 8192 } else { 65535 };
    let step = 1 + (ctl >> 1) as usize * 17;
    let chunked = decode(stream, max, step);
    let whole = decode(stream, max, stream.len().max(1));
    assert_eq!(chunked, whole);
});
