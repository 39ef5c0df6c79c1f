//! RTP: parse must never panic; and the input read as a sequence of
//! packets (each preceded by a 1-byte length) must never make the sequence
//! statistics, the reorder buffer or the H.264/H.265 depacketizers panic or
//! break their invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::h26x::Depacketizer;
use media::rtp::{self, Released, Reorder, SeqStats};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = rtp::parse(data) {
        assert!(p.payload.len() + 12 <= data.len());
        assert_eq!(p.csrcs().count(), p.csrc_count as usize);
    }

    let mut stats = SeqStats::new(90_000);
    let mut reorder: Reorder<Vec<u8>> = Reorder::new(8, 20_000_000);
    let mut h264 = Depacketizer::h264().with_max_au_size(1 << 16);
    let mut h265 = Depacketizer::h265().with_max_au_size(1 << 16);
    let mut out = Vec::new();
    let mut now = 0u64;
    let mut released = 0u64;
    let mut rest = data;
    let mut feed = |out: &mut Vec<Released<Vec<u8>>>| {
        for r in out.drain(..) {
            if let Released::Packet { item, .. } = r {
                released += 1;
                let p = rtp::parse(&item).expect("only valid packets are queued");
                for f in h264
                    .push(p.payload, p.sequence, p.timestamp, p.marker)
                    .into_iter()
                    .chain(h265.push(p.payload, p.sequence, p.timestamp, p.marker))
                {
                    assert!(f.data.len() <= 1 << 16);
                }
            }
        }
    };
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        let (pkt, tail) = tail.split_at(n);
        rest = tail;
        now += 3_000_000;
        if let Ok(p) = rtp::parse(pkt) {
            stats.record(p.sequence, p.timestamp, pkt.len(), now);
            reorder.push(p.sequence, pkt.to_vec(), now, &mut out);
            feed(&mut out);
        }
        assert!(stats.lost() <= stats.expected());
        assert!(stats.jitter().is_finite() && stats.jitter() >= 0.0);
        assert!(reorder.held() <= 8);
    }
    reorder.flush(&mut out);
    feed(&mut out);
    let s = reorder.stats();
    assert_eq!(s.released, released);
    assert!(s.released + s.late + s.duplicates <= stats.packets());
    let _ = (h264.flush(), h265.flush());
});
