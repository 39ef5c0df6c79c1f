//! MPEG-PS demuxing: whatever the bytes and however they are cut into RTP
//! payloads, the demuxer never panics and stays within its memory bounds;
//! and the same bytes muxed as one access unit come back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::ps::{packetize_rtp, PsDemuxer, PsMuxer, DEFAULT_MAX_FRAME_SIZE};
use media::Codec;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    // Control byte: bits 0-5 payload size, bit 6 a small maximum frame
    // size, bit 7 markers on some payloads.
    let max = if ctl & 0x40 != 0 {
        4096
    } else {
        DEFAULT_MAX_FRAME_SIZE
    };
    let step = 1 + (ctl & 0x3F) as usize * 23;
    let mut d = PsDemuxer::new().with_max_frame_size(max);
    let mut ts = 0u32;
    for (i, c) in stream.chunks(step).enumerate() {
        match c[0] {
            0x47 => ts = ts.wrapping_add(3600),
            0x55 => d.discontinuity(),
            _ => {}
        }
        let marker = ctl & 0x80 != 0 && i % 3 == 2;
        for f in d.push(c, ts, marker) {
            assert!(!f.data.is_empty() && f.data.len() <= max);
        }
        // At most a program stream map (6 + 65535 bytes) is held back.
        assert!(d.buffered() <= 6 + 65535, "{} bytes held", d.buffered());
    }
    for f in d.flush() {
        assert!(!f.data.is_empty() && f.data.len() <= max);
    }
    assert_eq!(d.buffered(), 0);

    // Round trip: any payload without a system start code (00 00 01 then
    // 0xB9 or above, which no video elementary stream contains).
    let system_code = stream
        .windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] >= 0xB9);
    if !stream.is_empty() && !system_code {
        let mut ps = Vec::new();
        PsMuxer::new(Codec::H264).write_video(stream, 1234, None, &mut ps);
        let mut d = PsDemuxer::new();
        let mut frames = Vec::new();
        for c in packetize_rtp(&ps, step) {
            frames.extend(d.push(c, 7, false));
        }
        frames.extend(d.flush());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, stream);
        assert_eq!(frames[0].pts, Some(1234));
    }
});
