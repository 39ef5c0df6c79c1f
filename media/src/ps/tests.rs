use super::*;
use crate::h26x::tests::{body, h264_au, h265_au};
use crate::testutil::Rng;

/// One access unit given to the muxer.
struct Input {
    au: Vec<u8>,
    pts: u64,
    dts: Option<u64>,
    key: bool,
}

/// `n` access units of `codec`, a key frame every 10, with these slice
/// sizes.
fn gop(rng: &mut Rng, codec: Codec, sizes: &[usize]) -> Vec<Input> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let key = i % 10 == 0;
            let au = match codec {
                Codec::H265 => h265_au(rng, key, size),
                _ => h264_au(rng, key, size),
            };
            let pts = 90_000 + i as u64 * 3600;
            Input {
                au,
                pts,
                dts: (i % 3 == 1).then(|| pts - 3600),
                key,
            }
        })
        .collect()
}

fn random_sizes(rng: &mut Rng, n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            if i % 10 == 0 {
                rng.range(5000, 60_000)
            } else {
                rng.range(1, 8000)
            }
        })
        .collect()
}

fn mux(codec: Codec, inputs: &[Input]) -> Vec<Vec<u8>> {
    let mut m = PsMuxer::new(codec);
    inputs
        .iter()
        .map(|f| {
            let mut ps = Vec::new();
            m.write_video(&f.au, f.pts, f.dts, &mut ps);
            ps
        })
        .collect()
}

/// Pushes each frame's PS as RTP payloads cut by `cut`, with the frame's
/// timestamp (or `fixed_ts`) and the marker on its last payload when
/// `markers`; then flushes.
fn run(
    d: &mut PsDemuxer,
    frames_ps: &[Vec<u8>],
    inputs: &[Input],
    mut cut: impl FnMut() -> usize,
    markers: bool,
    fixed_ts: Option<u32>,
) -> Vec<Frame> {
    let mut out = Vec::new();
    for (ps, f) in frames_ps.iter().zip(inputs) {
        let ts = fixed_ts.unwrap_or(f.pts as u32);
        let mut i = 0;
        while i < ps.len() {
            let n = cut().min(ps.len() - i);
            let last = i + n == ps.len();
            out.extend(d.push(&ps[i..i + n], ts, markers && last));
            i += n;
        }
    }
    out.extend(d.flush());
    out
}

fn assert_frames(frames: &[Frame], inputs: &[Input], codec: Codec, check_ts: bool) {
    assert_eq!(frames.len(), inputs.len());
    for (i, (f, inp)) in frames.iter().zip(inputs).enumerate() {
        assert_eq!(f.kind, FrameKind::Video, "frame {i}");
        assert!(
            f.data == inp.au,
            "frame {i}: {} vs {} bytes",
            f.data.len(),
            inp.au.len()
        );
        assert_eq!(f.pts, Some(inp.pts), "frame {i}");
        assert_eq!(f.dts, inp.dts, "frame {i}");
        assert_eq!(f.keyframe, inp.key, "frame {i}");
        assert_eq!(f.codec, codec, "frame {i}");
        if check_ts {
            assert_eq!(f.rtp_timestamp, inp.pts as u32, "frame {i}");
        }
    }
}

fn clean(s: &PsStats) {
    assert_eq!(
        (
            s.resyncs,
            s.truncated,
            s.absurd_lengths,
            s.bytes_skipped,
            s.dropped_frames
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
}

#[test]
fn h264_round_trip_1388_with_prompt_output() {
    let mut rng = Rng::new(1);
    let mut sizes = random_sizes(&mut rng, 40);
    sizes[13] = 200_000; // a frame over 4 PES packets
    let inputs = gop(&mut rng, Codec::H264, &sizes);
    let ps = mux(Codec::H264, &inputs);
    let mut d = PsDemuxer::new();
    let mut frames = Vec::new();
    for (k, (p, f)) in ps.iter().zip(&inputs).enumerate() {
        let chunks: Vec<&[u8]> = packetize_rtp(p, 1388).collect();
        for (j, c) in chunks.iter().enumerate() {
            frames.extend(d.push(c, f.pts as u32, j + 1 == chunks.len()));
        }
        // With correct markers each frame comes out with its last packet.
        assert_eq!(frames.len(), k + 1);
    }
    assert!(d.flush().is_empty());
    assert_frames(&frames, &inputs, Codec::H264, true);
    let s = d.stats();
    clean(&s);
    assert_eq!((s.frames, s.packs), (40, 40));
    assert!(s.pes >= 43, "the 200 KB frame spans several PES: {s:?}");
    assert_eq!(d.buffered(), 0);
}

#[test]
fn h265_round_trip_1388() {
    let mut rng = Rng::new(2);
    let mut sizes = random_sizes(&mut rng, 30);
    sizes[5] = 200_000;
    let inputs = gop(&mut rng, Codec::H265, &sizes);
    let ps = mux(Codec::H265, &inputs);
    let mut d = PsDemuxer::new();
    let frames = run(&mut d, &ps, &inputs, || 1388, true, None);
    assert_frames(&frames, &inputs, Codec::H265, true);
    clean(&d.stats());
}

#[test]
fn random_payload_sizes() {
    for (seed, codec) in [(3, Codec::H264), (4, Codec::H265), (5, Codec::H264)] {
        let mut rng = Rng::new(seed);
        let sizes = random_sizes(&mut rng, 30);
        let inputs = gop(&mut rng, codec, &sizes);
        let ps = mux(codec, &inputs);
        let mut d = PsDemuxer::new();
        let mut cut = Rng::new(seed + 100);
        let frames = run(&mut d, &ps, &inputs, || cut.range(1, 2000), true, None);
        assert_frames(&frames, &inputs, codec, true);
        clean(&d.stats());
    }
}

#[test]
fn tiny_payloads() {
    // 1 to 3 bytes per push: every header split everywhere.
    let mut rng = Rng::new(6);
    let inputs = gop(&mut rng, Codec::H264, &[3000, 10, 1, 70_000, 5]);
    let ps = mux(Codec::H264, &inputs);
    let mut d = PsDemuxer::new();
    let mut cut = Rng::new(7);
    let frames = run(&mut d, &ps, &inputs, || cut.range(1, 3), true, None);
    assert_frames(&frames, &inputs, Codec::H264, true);
    clean(&d.stats());
}

#[test]
fn wrong_markers_split_by_timestamp() {
    let mut rng = Rng::new(8);
    let sizes = random_sizes(&mut rng, 25);
    let inputs = gop(&mut rng, Codec::H264, &sizes);
    let ps = mux(Codec::H264, &inputs);
    let mut d = PsDemuxer::new();
    let mut frames = Vec::new();
    for (k, (p, f)) in ps.iter().zip(&inputs).enumerate() {
        for c in packetize_rtp(p, 1388) {
            frames.extend(d.push(c, f.pts as u32, false));
        }
        // Frame k comes out with the first packet of frame k + 1.
        assert_eq!(frames.len(), k);
    }
    frames.extend(d.flush());
    assert_frames(&frames, &inputs, Codec::H264, true);
    clean(&d.stats());
}

#[test]
fn wrong_markers_and_constant_timestamp_split_by_pts() {
    let mut rng = Rng::new(9);
    let sizes = random_sizes(&mut rng, 25);
    let inputs = gop(&mut rng, Codec::H265, &sizes);
    let ps = mux(Codec::H265, &inputs);
    let mut d = PsDemuxer::new();
    let frames = run(&mut d, &ps, &inputs, || 1388, false, Some(12345));
    assert_frames(&frames, &inputs, Codec::H265, false);
    clean(&d.stats());
}

#[test]
fn stream_cut_without_regard_to_frames() {
    // The whole stream as one byte sequence cut at random sizes: frames
    // start in the middle of RTP payloads.
    let mut rng = Rng::new(10);
    let sizes = random_sizes(&mut rng, 30);
    let inputs = gop(&mut rng, Codec::H264, &sizes);
    let stream: Vec<u8> = mux(Codec::H264, &inputs).concat();
    let mut d = PsDemuxer::new();
    let mut frames = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        let n = rng.range(1, 2000).min(stream.len() - i);
        frames.extend(d.push(&stream[i..i + n], 0, false));
        i += n;
    }
    frames.extend(d.flush());
    assert_frames(&frames, &inputs, Codec::H264, false);
    clean(&d.stats());
}

/// Random bytes without 0x00, so they cannot contain a start code.
fn garbage(rng: &mut Rng, n: usize) -> Vec<u8> {
    rng.bytes(n).into_iter().map(|b| b.max(1)).collect()
}

#[test]
fn garbage_between_packs_is_skipped() {
    let mut rng = Rng::new(11);
    let sizes = random_sizes(&mut rng, 30);
    let inputs = gop(&mut rng, Codec::H264, &sizes);
    let ps = mux(Codec::H264, &inputs);
    let mut stream = Vec::new();
    let mut total = 0;
    let mut segments = 0;
    for (i, p) in ps.iter().enumerate() {
        stream.extend_from_slice(p);
        if i % 3 == 1 {
            let n = rng.range(1, 700);
            stream.extend(garbage(&mut rng, n));
            total += n;
            segments += 1;
        }
    }
    // Also garbage at the very start.
    let mut lead = garbage(&mut rng, 50);
    lead.extend_from_slice(&stream);
    let stream = lead;
    total += 50;
    segments += 1;
    let mut d = PsDemuxer::new();
    let mut frames = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        let n = rng.range(1, 2000).min(stream.len() - i);
        frames.extend(d.push(&stream[i..i + n], 0, false));
        i += n;
    }
    frames.extend(d.flush());
    assert_frames(&frames, &inputs, Codec::H264, false);
    let s = d.stats();
    assert_eq!(s.resyncs, segments);
    assert_eq!(s.bytes_skipped, total as u64);
    assert_eq!((s.truncated, s.dropped_frames, s.absurd_lengths), (0, 0, 0));
}

#[test]
fn truncated_pes_drops_only_its_frame() {
    let mut rng = Rng::new(12);
    let sizes: Vec<usize> = (0..12)
        .map(|i| if i == 4 { 30_000 } else { 3000 })
        .collect();
    let mut inputs = gop(&mut rng, Codec::H264, &sizes);
    let mut ps = mux(Codec::H264, &inputs);
    // Frame 4 loses its last 500 bytes (inside its only PES).
    let n = ps[4].len();
    ps[4].truncate(n - 500);
    let mut d = PsDemuxer::new();
    let frames = run(&mut d, &ps, &inputs, || 1388, true, None);
    inputs.remove(4);
    assert_frames(&frames, &inputs, Codec::H264, true);
    let s = d.stats();
    assert_eq!((s.truncated, s.dropped_frames), (1, 1));
    assert_eq!((s.resyncs, s.bytes_skipped), (0, 0));
}

#[test]
fn truncated_last_frame_is_dropped_at_flush() {
    let mut rng = Rng::new(13);
    let inputs = gop(&mut rng, Codec::H264, &[3000, 3000]);
    let mut ps = mux(Codec::H264, &inputs);
    let n = ps[1].len();
    ps[1].truncate(n - 10);
    let mut d = PsDemuxer::new();
    let frames = run(&mut d, &ps, &inputs, || 1388, false, None);
    assert_frames(&frames, &inputs[..1], Codec::H264, true);
    assert_eq!((d.stats().truncated, d.stats().dropped_frames), (1, 1));
}

#[test]
fn absurd_pes_lengths_resync() {
    let mut rng = Rng::new(14);
    let sizes: Vec<usize> = (0..10).map(|_| rng.range(100, 20_000)).collect();
    let inputs = gop(&mut rng, Codec::H264, &sizes);
    let mut ps = mux(Codec::H264, &inputs);
    // A PES whose header is longer than the packet.
    ps[2].extend_from_slice(&[0, 0, 1, 0xE0, 0, 5, 0x80, 0x80, 0xFF, 1, 2, 3, 4, 5]);
    // A PES longer than the maximum frame size (40 000 here).
    ps[5].extend_from_slice(&[0, 0, 1, 0xC0, 0xFF, 0xF0, 0x80, 0, 0]);
    ps[5].extend(garbage(&mut rng, 100));
    // A PTS flag with a too short header.
    ps[7].extend_from_slice(&[0, 0, 1, 0xE0, 0, 20, 0x80, 0x80, 2, 1, 2]);
    ps[7].extend(garbage(&mut rng, 17));
    let mut d = PsDemuxer::new().with_max_frame_size(40_000);
    let frames = run(&mut d, &ps, &inputs, || 1388, true, None);
    assert_frames(&frames, &inputs, Codec::H264, true);
    let s = d.stats();
    assert_eq!(s.absurd_lengths, 3);
    assert_eq!(s.resyncs, 3);
    assert_eq!(s.bytes_skipped, 14 + 9 + 100 + 11 + 17);
    assert_eq!(s.dropped_frames, 0);
}

/// A hand-made pack: pack header, optional PSM bytes, one video PES.
fn pack(psm: &[u8], au: &[u8], pts: u64) -> Vec<u8> {
    let mut v = Vec::new();
    write_pack_header(pts, &mut v);
    v.extend_from_slice(psm);
    write_pes_packets(0xE0, au, pts, None, &mut v);
    v
}

fn psm_bytes(len: u16, psil: u16, esml: u16, entries: &[(u8, u8, u16)], crc: bool) -> Vec<u8> {
    let mut v = vec![0, 0, 1, 0xBC];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&[0xE0, 0xFF]);
    v.extend_from_slice(&psil.to_be_bytes());
    v.extend_from_slice(&esml.to_be_bytes());
    for &(st, id, info) in entries {
        v.extend_from_slice(&[st, id]);
        v.extend_from_slice(&info.to_be_bytes());
        v.extend(std::iter::repeat_n(0xAA, info as usize));
    }
    if crc {
        v.extend_from_slice(&[1, 2, 3, 4]);
    }
    v
}

fn demux_all(d: &mut PsDemuxer, stream: &[u8], chunk: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    for c in stream.chunks(chunk) {
        frames.extend(d.push(c, 0, false));
    }
    frames.extend(d.flush());
    frames
}

#[test]
fn psm_with_lying_lengths_is_rejected() {
    let mut rng = Rng::new(15);
    let aus: Vec<Vec<u8>> = (0..6).map(|i| h265_au(&mut rng, i == 0, 2000)).collect();
    let lies = [
        psm_bytes(4, 0, 0, &[], false),                     // shorter than 12
        psm_bytes(14, 0x1000, 4, &[(0x1B, 0xE0, 0)], true), // psil beyond
        psm_bytes(14, 0, 0x0400, &[(0x1B, 0xE0, 0)], true), // esml beyond
        psm_bytes(18, 0, 8, &[(0x1B, 0xE0, 0), (0x90, 0xC0, 9)], true), // es_info beyond map
    ];
    for (k, lie) in lies.iter().enumerate() {
        let mut stream = Vec::new();
        for (i, au) in aus.iter().enumerate() {
            let psm: &[u8] = if i == 0 { lie } else { &[] };
            stream.extend(pack(psm, au, i as u64 * 3600));
        }
        for chunk in [1388, 7] {
            let mut d = PsDemuxer::new();
            let frames = demux_all(&mut d, &stream, chunk);
            assert_eq!(frames.len(), aus.len(), "lie {k}");
            for (f, au) in frames.iter().zip(&aus) {
                assert_eq!(&f.data, au, "lie {k}");
                // The stream type of the lying PSM is not used: guessed.
                assert_eq!(f.codec, Codec::H265, "lie {k}");
            }
            let s = d.stats();
            assert_eq!((s.absurd_lengths, s.resyncs), (1, 1), "lie {k}");
            assert_eq!(s.dropped_frames, 0);
        }
    }
}

#[test]
fn psm_decides_codec_and_tolerates_extra_length() {
    let mut rng = Rng::new(16);
    let aus: Vec<Vec<u8>> = (0..3).map(|i| h264_au(&mut rng, i == 0, 500)).collect();
    // Claims SVAC, and 5 bytes more than it holds (trailing junk).
    let mut psm = psm_bytes(10 + 4 + 4 + 5, 4, 4, &[(0x80, 0xE0, 0)], false);
    // program_stream_info of 4 bytes sits before the es map length.
    psm.splice(10..10, [9, 9, 9, 9]);
    psm.extend_from_slice(&[1, 2, 3, 4]); // CRC
    psm.extend_from_slice(&[5, 5, 5, 5, 5]);
    let mut stream = Vec::new();
    for (i, au) in aus.iter().enumerate() {
        stream.extend(pack(if i == 0 { &psm } else { &[] }, au, i as u64 * 3600));
    }
    let mut d = PsDemuxer::new();
    let frames = demux_all(&mut d, &stream, 100);
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.codec == Codec::Svac));
    assert!(
        frames.iter().all(|f| !f.keyframe),
        "no key frame rule for SVAC"
    );
    assert_eq!(frames[1].data, aus[1]);
    let s = d.stats();
    assert_eq!((s.absurd_lengths, s.resyncs, s.bytes_skipped), (0, 1, 5));
}

#[test]
fn codec_is_guessed_without_psm() {
    let mut rng = Rng::new(17);
    for (codec, au) in [
        (Codec::H264, h264_au(&mut rng, false, 300)),
        (Codec::H265, h265_au(&mut rng, false, 300)),
    ] {
        let stream = pack(&[], &au, 0);
        let mut d = PsDemuxer::new();
        let frames = demux_all(&mut d, &stream, 1388);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].codec, codec);
        assert!(!frames[0].keyframe);
    }
}

#[test]
fn pes_length_zero_runs_to_next_start_code() {
    let mut rng = Rng::new(18);
    let aus: Vec<Vec<u8>> = (0..5).map(|i| h264_au(&mut rng, i == 0, 3000)).collect();
    let mut stream = Vec::new();
    for (i, au) in aus.iter().enumerate() {
        write_pack_header(i as u64 * 3600, &mut stream);
        let mut pes = Vec::new();
        write_pes(0xE0, au, Some(i as u64 * 3600), None, &mut pes);
        pes[4] = 0;
        pes[5] = 0;
        stream.extend(pes);
    }
    // Also with trailing zero bytes at the end of the last frame's data.
    for chunk in [1388, 1, 2, 3, 5000] {
        let mut d = PsDemuxer::new();
        let frames = demux_all(&mut d, &stream, chunk);
        assert_eq!(frames.len(), 5, "chunk {chunk}");
        for (i, (f, au)) in frames.iter().zip(&aus).enumerate() {
            assert_eq!(&f.data, au, "chunk {chunk} frame {i}");
            assert_eq!(f.pts, Some(i as u64 * 3600));
        }
        clean(&d.stats());
    }
}

#[test]
fn pack_header_variants_and_mpeg1_pes() {
    let mut rng = Rng::new(19);
    let aus: Vec<Vec<u8>> = (0..3).map(|i| h264_au(&mut rng, i == 0, 1000)).collect();
    let mut stream = Vec::new();
    // MPEG-2 pack header with 5 stuffing bytes, MPEG-2 PES.
    let mut ph = Vec::new();
    write_pack_header(0, &mut ph);
    ph[13] = 0xF8 | 5;
    ph.extend_from_slice(&[0xFF; 5]);
    stream.extend(&ph);
    write_pes(0xE0, &aus[0], Some(1000), None, &mut stream);
    // MPEG-1 pack header (12 bytes), MPEG-1 PES: stuffing, STD buffer,
    // PTS + DTS.
    stream.extend_from_slice(&[0, 0, 1, 0xBA, 0x21, 0, 1, 0, 1, 0x80, 0, 1]);
    let mut hdr = vec![0xFF, 0xFF, 0x60, 0x10];
    write_ts(3, 2000, &mut hdr);
    write_ts(1, 1900, &mut hdr);
    stream.extend_from_slice(&[0, 0, 1, 0xE0]);
    stream.extend_from_slice(&((hdr.len() + aus[1].len()) as u16).to_be_bytes());
    stream.extend(hdr);
    stream.extend(&aus[1]);
    // System header, padding and private stream 1 are skipped; program
    // end code.
    stream.extend_from_slice(&[0, 0, 1, 0xBA, 0x21, 0, 1, 0, 1, 0x80, 0, 1]);
    stream.extend_from_slice(&[0, 0, 1, 0xBB, 0, 3, 0, 0, 1]);
    stream.extend_from_slice(&[0, 0, 1, 0xBE, 0, 4, 0xFF, 0xFF, 0, 1]);
    stream.extend_from_slice(&[0, 0, 1, 0xBD, 0, 2, 0, 0]);
    // MPEG-1 PES without time stamps (0x0F).
    stream.extend_from_slice(&[0, 0, 1, 0xE0]);
    stream.extend_from_slice(&((1 + aus[2].len()) as u16).to_be_bytes());
    stream.push(0x0F);
    stream.extend(&aus[2]);
    stream.extend_from_slice(&[0, 0, 1, 0xB9]);
    for chunk in [1, 7, 1388] {
        let mut d = PsDemuxer::new();
        let frames = demux_all(&mut d, &stream, chunk);
        assert_eq!(frames.len(), 3, "chunk {chunk}");
        for (f, au) in frames.iter().zip(&aus) {
            assert_eq!(&f.data, au);
        }
        assert_eq!((frames[0].pts, frames[0].dts), (Some(1000), None));
        assert_eq!((frames[1].pts, frames[1].dts), (Some(2000), Some(1900)));
        assert_eq!((frames[2].pts, frames[2].dts), (None, None));
        let s = d.stats();
        clean(&s);
        assert_eq!((s.packs, s.pes), (3, 5));
    }
}

#[test]
fn pack_per_pes_with_repeated_pts_is_one_frame() {
    let mut rng = Rng::new(20);
    let big = h264_au(&mut rng, true, 150_000);
    let small = h264_au(&mut rng, false, 100);
    let mut stream = Vec::new();
    for c in big.chunks(40_000) {
        write_pack_header(3600, &mut stream);
        write_pes(0xE0, c, Some(3600), None, &mut stream);
    }
    stream.extend(pack(&[], &small, 7200));
    let mut d = PsDemuxer::new();
    let frames = demux_all(&mut d, &stream, 1388);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].data, big);
    assert!(frames[0].keyframe);
    assert_eq!(frames[1].data, small);
    assert_eq!(d.stats().packs, 5);
}

#[test]
fn audio_and_video_interleaved() {
    let mut rng = Rng::new(21);
    let sizes = random_sizes(&mut rng, 12);
    let inputs = gop(&mut rng, Codec::H264, &sizes);
    let mut m = PsMuxer::new(Codec::H264).with_audio(Codec::G711A);
    let mut d = PsDemuxer::new();
    let mut video = Vec::new();
    let mut audio = Vec::new();
    let mut sent_audio = Vec::new();
    for (i, f) in inputs.iter().enumerate() {
        let mut ps = Vec::new();
        m.write_video(&f.au, f.pts, f.dts, &mut ps);
        let a = rng.bytes(320);
        m.write_audio(&a, f.pts + 10, &mut ps);
        sent_audio.push(a);
        let chunks: Vec<&[u8]> = packetize_rtp(&ps, 1388).collect();
        for (j, c) in chunks.iter().enumerate() {
            for fr in d.push(c, i as u32 * 3600, j + 1 == chunks.len()) {
                match fr.kind {
                    FrameKind::Video => video.push(fr),
                    FrameKind::Audio => audio.push(fr),
                }
            }
        }
    }
    video.extend(d.flush());
    assert_frames(&video, &inputs, Codec::H264, false);
    assert_eq!(audio.len(), inputs.len());
    for (i, a) in audio.iter().enumerate() {
        assert_eq!(a.codec, Codec::G711A);
        assert_eq!(a.data, sent_audio[i]);
        assert_eq!(a.pts, Some(inputs[i].pts + 10));
        assert!(a.keyframe);
    }
    clean(&d.stats());
    // Without a PSM, ADTS audio is recognised as AAC.
    let mut s = Vec::new();
    write_pack_header(0, &mut s);
    write_pes(0xC0, &[0xFF, 0xF1, 0x50, 0x80, 1, 2], Some(5), None, &mut s);
    let mut d = PsDemuxer::new();
    let f = demux_all(&mut d, &s, 3);
    assert_eq!(
        (f.len(), f[0].codec, f[0].kind),
        (1, Codec::Aac, FrameKind::Audio)
    );
}

#[test]
fn oversized_frame_is_dropped() {
    let mut rng = Rng::new(22);
    let mut sizes = vec![3000; 8];
    sizes[3] = 200_000;
    let mut inputs = gop(&mut rng, Codec::H264, &sizes);
    let ps = mux(Codec::H264, &inputs);
    let mut d = PsDemuxer::new().with_max_frame_size(100_000);
    let frames = run(&mut d, &ps, &inputs, || 1388, true, None);
    inputs.remove(3);
    assert_frames(&frames, &inputs, Codec::H264, true);
    let s = d.stats();
    assert_eq!(s.dropped_frames, 1);
    assert_eq!((s.resyncs, s.truncated, s.absurd_lengths), (0, 0, 0));
}

#[test]
fn discontinuity_drops_the_damaged_frame() {
    let mut rng = Rng::new(23);
    let sizes = vec![10_000; 10];
    let inputs = gop(&mut rng, Codec::H264, &sizes);
    let ps = mux(Codec::H264, &inputs);
    let mut d = PsDemuxer::new();
    let mut frames = Vec::new();
    for (k, (p, f)) in ps.iter().zip(&inputs).enumerate() {
        let chunks: Vec<&[u8]> = packetize_rtp(p, 1388).collect();
        for (j, c) in chunks.iter().enumerate() {
            // Frame 3 loses packet 2; frame 6 loses its first packet.
            if (k == 3 && j == 2) || (k == 6 && j == 0) {
                d.discontinuity();
                continue;
            }
            frames.extend(d.push(c, f.pts as u32, j + 1 == chunks.len()));
        }
    }
    frames.extend(d.flush());
    let kept: Vec<Input> = inputs
        .into_iter()
        .enumerate()
        .filter(|(k, _)| *k != 3 && *k != 6)
        .map(|(_, f)| f)
        .collect();
    assert_frames(&frames, &kept, Codec::H264, true);
    let s = d.stats();
    assert_eq!(s.dropped_frames, 1, "frame 6 never started: {s:?}");
    assert_eq!(s.resyncs, 2);
}

#[test]
fn crc32_mpeg2_check_value() {
    assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
}

/// Applies one random mutation.
fn mutate(rng: &mut Rng, v: &mut Vec<u8>) {
    if v.is_empty() {
        v.extend(rng.bytes(10));
        return;
    }
    let i = rng.range(0, v.len() - 1);
    match rng.range(0, 9) {
        0 => v[i] = rng.byte(),
        1 => v[i] ^= 1 << rng.range(0, 7),
        2 => {
            let n = rng.range(1, 64).min(v.len() - i);
            v.drain(i..i + n);
        }
        3 => {
            let n = rng.range(1, 64);
            let b = rng.bytes(n);
            v.splice(i..i, b);
        }
        4 => {
            let n = rng.range(1, 300).min(v.len() - i);
            let dup = v[i..i + n].to_vec();
            v.splice(i..i, dup);
        }
        5 => v.truncate(i),
        6 => {
            let id = [0xBA, 0xBB, 0xBC, 0xE0, 0xC0, 0xBD, 0xBE, 0xB9][rng.range(0, 7)];
            v.splice(i..i, [0, 0, 1, id]);
        }
        7 => {
            // A length field to an extreme.
            if i + 6 <= v.len() {
                let b = [[0xFF, 0xFF], [0, 0], [0, 1], [0xFF, 0x00]][rng.range(0, 3)];
                v[i + 4..i + 6].copy_from_slice(&b);
            }
        }
        8 => v[i] = [0, 0xFF, 0x80, 0x40, 0x21][rng.range(0, 4)],
        _ => {
            let j = rng.range(0, v.len() - 1);
            v.swap(i, j);
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = Rng::new(24);
    let mut psm_rng = Rng::new(25);
    let inputs = gop(&mut psm_rng, Codec::H264, &[2000, 300, 70_000, 50, 1]);
    let mut m = PsMuxer::new(Codec::H265).with_audio(Codec::Aac);
    let mut base = Vec::new();
    for f in &inputs {
        m.write_video(&f.au, f.pts, f.dts, &mut base);
        m.write_audio(&body(&mut psm_rng, 100), f.pts, &mut base);
    }
    let mut total_frames = 0;
    for round in 0..2000 {
        let mut v = base.clone();
        for _ in 0..rng.range(1, 8) {
            mutate(&mut rng, &mut v);
        }
        if round % 50 == 0 {
            let n = rng.range(0, 5000);
            v = rng.bytes(n); // a body of random bytes
        }
        let max = if round % 2 == 0 {
            DEFAULT_MAX_FRAME_SIZE
        } else {
            20_000
        };
        let mut d = PsDemuxer::new().with_max_frame_size(max);
        let mut i = 0;
        let mut ts = 0u32;
        while i < v.len() {
            let n = rng.range(1, 2000).min(v.len() - i);
            if rng.range(0, 20) == 0 {
                ts = ts.wrapping_add(3600);
            }
            if rng.range(0, 100) == 0 {
                d.discontinuity();
            }
            for f in d.push(&v[i..i + n], ts, rng.range(0, 10) == 0) {
                assert!(f.data.len() <= max);
                total_frames += 1;
            }
            assert!(d.buffered() <= max + BUFFER_SLACK);
            assert!(d.buffered() <= 70_000, "only a PSM or a header is held");
            i += n;
        }
        for f in d.flush() {
            assert!(f.data.len() <= max);
        }
    }
    assert!(total_frames > 2000, "mutated streams still yield frames");
}

#[test]
fn discontinuity_skips_the_rest_of_a_multi_pes_frame() {
    let mut rng = Rng::new(26);
    // Muxer layout (PTS on the first PES only): lose a packet inside the
    // first PES of the 200 KB frame; its three later PES are skipped.
    let inputs = gop(&mut rng, Codec::H264, &[3000, 200_000, 3000, 3000]);
    let ps = mux(Codec::H264, &inputs);
    // Encoders that repeat the PTS, with a pack per PES.
    let big = h264_au(&mut rng, true, 150_000);
    let mut repeated = Vec::new();
    for c in big.chunks(40_000) {
        write_pack_header(7200, &mut repeated);
        write_pes(0xE0, c, Some(7200), None, &mut repeated);
    }
    let small = h264_au(&mut rng, false, 100);
    let streams = [
        (ps, inputs.iter().map(|f| f.au.clone()).collect::<Vec<_>>()),
        (
            vec![pack(&[], &small, 3600), repeated, pack(&[], &small, 10_800)],
            vec![small.clone(), big, small.clone()],
        ),
    ];
    for (k, (frames_ps, aus)) in streams.iter().enumerate() {
        let mut d = PsDemuxer::new();
        let mut frames = Vec::new();
        for (i, p) in frames_ps.iter().enumerate() {
            let chunks: Vec<&[u8]> = packetize_rtp(p, 1388).collect();
            for (j, c) in chunks.iter().enumerate() {
                if i == 1 && j == 5 {
                    d.discontinuity();
                    continue;
                }
                frames.extend(d.push(c, i as u32, j + 1 == chunks.len()));
            }
        }
        frames.extend(d.flush());
        let want: Vec<&Vec<u8>> = aus
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, a)| a)
            .collect();
        let got: Vec<&Vec<u8>> = frames.iter().map(|f| &f.data).collect();
        assert!(got == want, "stream {k}: {} frames", got.len());
        let s = d.stats();
        assert_eq!(s.dropped_frames, 1, "stream {k}");
        assert!(s.bytes_skipped > 100_000, "stream {k}: {s:?}");
    }
}
