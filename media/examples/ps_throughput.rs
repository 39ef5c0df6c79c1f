//! PsDemuxer throughput on a synthetic GB28181 stream (H.264 in PS, cut
//! into 1388-byte RTP payloads with markers), against a baseline that only
//! copies the same payloads, measured side by side in this process.
//!
//!     cargo run --release -p gb28181-media --example ps_throughput [MB]

use std::hint::black_box;
use std::time::{Duration, Instant};

use media::ps::{packetize_rtp, PsDemuxer, PsMuxer};
use media::Codec;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A NAL unit of random bytes without a `00 00` pair.
fn nal(rng: &mut Rng, header: u8, n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0, 1, header]);
    let mut prev = 1;
    for _ in 0..n {
        let mut b = (rng.next() >> 56) as u8;
        if b == 0 && prev == 0 {
            b = 1;
        }
        out.push(b);
        prev = b;
    }
    if out.last() == Some(&0) {
        out.push(1);
    }
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    // One 2-second GOP at 25 fps (key frame 150 KB, P-frames 15-45 KB,
    // about 4 Mbit/s), repeated until the stream has `mb` MB.
    let mut rng = Rng(42);
    let mut m = PsMuxer::new(Codec::H264);
    let mut stream = Vec::new();
    let mut payloads = Vec::new(); // (start, end, ts, marker)
    let mut frames_sent = 0u64;
    let mut gop = Vec::new();
    for i in 0..50 {
        let mut au = Vec::new();
        if i == 0 {
            nal(&mut rng, 0x67, 15, &mut au);
            nal(&mut rng, 0x68, 4, &mut au);
            nal(&mut rng, 0x65, 150_000, &mut au);
        } else {
            let n = 15_000 + (rng.next() % 30_000) as usize;
            nal(&mut rng, 0x41, n, &mut au);
        }
        gop.push(au);
    }
    while stream.len() < mb << 20 {
        let au = &gop[frames_sent as usize % gop.len()];
        let pts = frames_sent * 3600;
        let mut ps = Vec::new();
        m.write_video(au, pts, None, &mut ps);
        let base = stream.len();
        let n = packetize_rtp(&ps, 1388).len();
        for (k, c) in packetize_rtp(&ps, 1388).enumerate() {
            let start = base + k * 1388;
            payloads.push((start, start + c.len(), pts as u32, k + 1 == n));
        }
        stream.extend_from_slice(&ps);
        frames_sent += 1;
    }
    let total = stream.len() as f64 / 1e6;

    let mut best_copy = Duration::MAX;
    let mut best_demux = Duration::MAX;
    let mut frames = 0;
    for _ in 0..5 {
        // Baseline: copy every payload once (the demuxer copies each
        // payload byte once, into its frame).
        let t = Instant::now();
        let mut sink = Vec::with_capacity(200_000);
        for &(a, b, _, marker) in &payloads {
            sink.extend_from_slice(&stream[a..b]);
            if marker {
                black_box(&sink);
                sink = Vec::with_capacity(200_000);
            }
        }
        best_copy = best_copy.min(t.elapsed());

        let t = Instant::now();
        let mut d = PsDemuxer::new();
        frames = 0;
        for &(a, b, ts, marker) in &payloads {
            for f in d.push(&stream[a..b], ts, marker) {
                frames += 1;
                black_box(&f.data);
            }
        }
        frames += d.flush().len();
        best_demux = best_demux.min(t.elapsed());
        assert_eq!(d.stats().dropped_frames + d.stats().resyncs, 0);
    }
    assert_eq!(frames as u64, frames_sent);
    let rate = |d: Duration| total / d.as_secs_f64();
    println!(
        "stream: {total:.1} MB, {} RTP payloads, {frames_sent} frames (best of 5 runs)",
        payloads.len()
    );
    println!(
        "copy baseline: {:8.1} ms  {:8.0} MB/s",
        best_copy.as_secs_f64() * 1e3,
        rate(best_copy)
    );
    println!(
        "PsDemuxer:     {:8.1} ms  {:8.0} MB/s  ({:.0} ms per 100 MB, {:.2}x the baseline time)",
        best_demux.as_secs_f64() * 1e3,
        rate(best_demux),
        best_demux.as_secs_f64() * 1e3 * 100.0 / total,
        best_demux.as_secs_f64() / best_copy.as_secs_f64()
    );
}
