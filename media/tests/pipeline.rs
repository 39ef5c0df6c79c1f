//! The receive pipeline end to end through the public API: PS muxer and RTP
//! sender on one side; RFC 4571 / interleaved TCP or UDP with reordering,
//! duplication and loss, RTP parsing, statistics, reorder buffer and PS
//! demuxer (or H.26x depacketizer) on the other.

use media::framing::{encode_interleaved, encode_rfc4571, Rfc4571Decoder};
use media::h26x::{Depacketizer, Packetizer};
use media::ps::{packetize_rtp, PsDemuxer, PsMuxer};
use media::rtp::{self, Released, Reorder, RtpHeader, SeqStats};
use media::{Codec, Frame, FrameKind};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// A NAL unit: header then random bytes with no `00 00` pair, ending in a
/// non-zero byte.
fn nal(rng: &mut Rng, header: &[u8], n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(header);
    let mut prev = 1u8;
    for i in 0..n {
        let mut b = (rng.next() >> 56) as u8;
        if b == 0 && (prev == 0 || i + 1 == n) {
            b = 0x3C;
        }
        out.push(b);
        prev = b;
    }
}

/// (access unit, keyframe) of H.264 or H.265.
fn access_units(rng: &mut Rng, h265: bool, n: usize) -> Vec<(Vec<u8>, bool)> {
    (0..n)
        .map(|i| {
            let key = i % 25 == 0;
            let size = if i == 7 {
                200_000
            } else if key {
                60_000
            } else {
                rng.range(200, 30_000)
            };
            let mut au = Vec::new();
            match (h265, key) {
                (false, true) => {
                    nal(rng, &[0x67], 15, &mut au);
                    nal(rng, &[0x68], 4, &mut au);
                    nal(rng, &[0x65], size, &mut au);
                }
                (false, false) => nal(rng, &[0x41], size, &mut au),
                (true, true) => {
                    nal(rng, &[0x40, 0x01], 20, &mut au);
                    nal(rng, &[0x42, 0x01], 40, &mut au);
                    nal(rng, &[0x44, 0x01], 6, &mut au);
                    nal(rng, &[0x26, 0x01], size, &mut au);
                }
                (true, false) => nal(rng, &[0x02, 0x01], size, &mut au),
            }
            (au, key)
        })
        .collect()
}

const SSRC: u32 = 340_200_001; // y=0340200001

/// RTP packets of a PS stream, one frame per pack, 1388-byte payloads.
fn ps_rtp(codec: Codec, aus: &[(Vec<u8>, bool)]) -> Vec<Vec<u8>> {
    let mut m = PsMuxer::new(codec);
    let mut seq = 65_000u16;
    let mut pkts = Vec::new();
    for (i, (au, _)) in aus.iter().enumerate() {
        let pts = i as u64 * 3600;
        let mut ps = Vec::new();
        m.write_video(au, pts, None, &mut ps);
        let chunks: Vec<&[u8]> = packetize_rtp(&ps, 1388).collect();
        for (k, c) in chunks.iter().enumerate() {
            let mut p = Vec::new();
            RtpHeader {
                marker: k + 1 == chunks.len(),
                pt: 96,
                seq,
                ts: pts as u32,
                ssrc: SSRC,
            }
            .write(&mut p);
            p.extend_from_slice(c);
            pkts.push(p);
            seq = seq.wrapping_add(1);
        }
    }
    pkts
}

fn check(frames: &[Frame], aus: &[(Vec<u8>, bool)], codec: Codec, skip: &[usize]) {
    let want: Vec<(usize, &(Vec<u8>, bool))> = aus
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .collect();
    assert_eq!(frames.len(), want.len());
    for (f, (i, (au, key))) in frames.iter().zip(want) {
        assert_eq!(f.kind, FrameKind::Video);
        assert_eq!(f.codec, codec, "frame {i}");
        assert!(&f.data == au, "frame {i} differs");
        assert_eq!(f.keyframe, *key, "frame {i}");
        assert_eq!(f.rtp_timestamp, i as u32 * 3600);
        if f.pts.is_some() {
            assert_eq!(f.pts, Some(i as u64 * 3600));
        }
    }
}

#[test]
fn ps_over_tcp_rfc4571_and_interleaved() {
    let mut rng = Rng(1);
    for (h265, codec) in [(false, Codec::H264), (true, Codec::H265)] {
        let aus = access_units(&mut rng, h265, 60);
        let pkts = ps_rtp(codec, &aus);
        let mut stream = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            if i % 7 == 3 {
                encode_interleaved(0, p, &mut stream).unwrap();
            } else {
                encode_rfc4571(p, &mut stream).unwrap();
            }
        }
        let mut dec = Rfc4571Decoder::with_max_len(8192);
        let mut demux = PsDemuxer::new();
        let mut stats = SeqStats::new(90_000);
        let mut frames = Vec::new();
        let mut i = 0;
        let mut now = 0u64;
        while i < stream.len() {
            let n = rng.range(1, 9000).min(stream.len() - i);
            dec.push(&stream[i..i + n]);
            i += n;
            while let Some(p) = dec.next_packet().unwrap() {
                let r = rtp::parse(&p).unwrap();
                assert_eq!((r.ssrc, r.payload_type), (SSRC, 96));
                now += 1_000_000;
                stats.record(r.sequence, r.timestamp, p.len(), now);
                frames.extend(demux.push(r.payload, r.timestamp, r.marker));
            }
        }
        frames.extend(demux.flush());
        check(&frames, &aus, codec, &[]);
        assert_eq!((stats.lost(), stats.duplicates()), (0, 0));
        assert_eq!(stats.expected(), pkts.len() as u64);
        let s = demux.stats();
        assert_eq!((s.resyncs, s.dropped_frames, s.bytes_skipped), (0, 0, 0));
    }
}

/// UDP: packets shuffled within blocks of 6, some duplicated, `lose` not
/// sent at all. Returns frames and the receiver's statistics.
fn udp(pkts: &[Vec<u8>], lose: &[usize], rng: &mut Rng) -> (Vec<Frame>, SeqStats, u64) {
    let mut order: Vec<usize> = (0..pkts.len()).filter(|i| !lose.contains(i)).collect();
    for block in order.chunks_mut(6) {
        for i in (1..block.len()).rev() {
            let j = rng.range(0, i);
            block.swap(i, j);
        }
    }
    let mut arrivals = Vec::new();
    for i in order {
        arrivals.push(i);
        if rng.range(0, 20) == 0 {
            arrivals.push(i);
        }
    }
    let dups = arrivals.len() - (pkts.len() - lose.len());
    let mut stats = SeqStats::new(90_000);
    let mut reorder: Reorder<Vec<u8>> = Reorder::default();
    let mut demux = PsDemuxer::new();
    let mut frames = Vec::new();
    let mut released = Vec::new();
    let mut handle = |released: &mut Vec<Released<Vec<u8>>>, demux: &mut PsDemuxer| {
        for r in released.drain(..) {
            match r {
                Released::Packet { item, .. } => {
                    let p = rtp::parse(&item).unwrap();
                    frames.extend(demux.push(p.payload, p.timestamp, p.marker));
                }
                Released::Gap { .. } => demux.discontinuity(),
            }
        }
    };
    for (k, &i) in arrivals.iter().enumerate() {
        let now = k as u64 * 500_000;
        let p = rtp::parse(&pkts[i]).unwrap();
        stats.record(p.sequence, p.timestamp, pkts[i].len(), now);
        reorder.push(p.sequence, pkts[i].clone(), now, &mut released);
        handle(&mut released, &mut demux);
    }
    reorder.flush(&mut released);
    handle(&mut released, &mut demux);
    frames.extend(demux.flush());
    (frames, stats, dups as u64)
}

#[test]
fn ps_over_udp_with_reordering_and_duplicates() {
    let mut rng = Rng(2);
    let aus = access_units(&mut rng, false, 60);
    let pkts = ps_rtp(Codec::H264, &aus);
    let (frames, stats, dups) = udp(&pkts, &[], &mut rng);
    check(&frames, &aus, Codec::H264, &[]);
    assert_eq!(stats.lost(), 0);
    assert_eq!(stats.duplicates(), dups);
    assert!(stats.out_of_order() > 100);
    assert_eq!(stats.expected(), pkts.len() as u64);
}

#[test]
fn ps_over_udp_with_loss_drops_only_damaged_frames() {
    let mut rng = Rng(3);
    let aus = access_units(&mut rng, true, 60);
    let pkts = ps_rtp(Codec::H265, &aus);
    // Which frame each packet belongs to.
    let mut frame_of = Vec::new();
    let mut f = 0;
    for p in &pkts {
        frame_of.push(f);
        if p[1] & 0x80 != 0 {
            f += 1;
        }
    }
    // Lose a middle packet of frame 7 (200 KB) and of frame 30.
    let in_frame = |n: usize| frame_of.iter().position(|&x| x == n).unwrap() + 3;
    let lose = [in_frame(7), in_frame(30)];
    let (frames, stats, _) = udp(&pkts, &lose, &mut rng);
    // Only the damaged frames are gone (frame 7 spans 4 PES packets: its
    // later PES must not come out as a frame of their own).
    check(&frames, &aus, Codec::H265, &[7, 30]);
    assert_eq!(stats.lost(), 2);
}

#[test]
fn raw_h264_and_h265_over_rtp() {
    let mut rng = Rng(4);
    for (h265, codec) in [(false, Codec::H264), (true, Codec::H265)] {
        let aus = access_units(&mut rng, h265, 30);
        let pk = if h265 {
            Packetizer::h265(1400)
        } else {
            Packetizer::h264(1400)
        };
        let mut dp = if h265 {
            Depacketizer::h265()
        } else {
            Depacketizer::h264()
        };
        let mut frames = Vec::new();
        let mut seq = 1u16;
        for (i, (au, _)) in aus.iter().enumerate() {
            let payloads = pk.packetize(au);
            for (k, pl) in payloads.iter().enumerate() {
                let mut p = Vec::new();
                let marker = k + 1 == payloads.len();
                RtpHeader {
                    marker,
                    pt: 98,
                    seq,
                    ts: i as u32 * 3600,
                    ssrc: SSRC,
                }
                .write(&mut p);
                p.extend_from_slice(pl);
                let r = rtp::parse(&p).unwrap();
                frames.extend(dp.push(r.payload, r.sequence, r.timestamp, r.marker));
                seq = seq.wrapping_add(1);
            }
        }
        frames.extend(dp.flush());
        check(&frames, &aus, codec, &[]);
        assert_eq!(dp.stats().dropped_nals, 0);
    }
}
