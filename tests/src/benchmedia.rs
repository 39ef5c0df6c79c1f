//! Media for the benchmarks: about 4 Mbit/s of 1280x720 H.264 as a
//! GB28181 camera sends it (PS over RTP, 1388-byte payloads).

use std::path::Path;

use anyhow::Result;
use media::{ps::PsMuxer, rtp::RtpHeader, Codec};

/// Encodes `secs` of 1280x720 H.264 at about 4 Mbit/s (ffmpeg) and splits
/// it into access units.
pub fn encode(dir: &Path, secs: u32) -> Result<Vec<Vec<u8>>> {
    let out = dir.join("src.h264");
    let secs = secs.to_string();
    crate::testmedia::ffmpeg_encode(
        &out,
        "testsrc2=size=1280x720:rate=25",
        &[
            "-t",
            &secs,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "4M",
            "-maxrate",
            "4M",
            "-bufsize",
            "2M",
            "-g",
            "50",
            "-bf",
            "0",
            "-bsf:v",
            "h264_metadata=aud=insert",
            "-f",
            "h264",
        ],
    )?;
    let aus = crate::testmedia::split_aus(&std::fs::read(&out)?);
    Ok(aus)
}

/// The RTP packets of each access unit, PS-muxed and cut at 1388 bytes
/// (sequence numbers and timestamps are rewritten per stream when sent).
pub fn rtp_frames(aus: &[Vec<u8>]) -> Vec<Vec<Vec<u8>>> {
    let mut frame_pkts: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut mux = PsMuxer::new(Codec::H264);
    for (i, au) in aus.iter().enumerate() {
        let mut p = Vec::new();
        mux.write_video(au, i as u64 * 3600, None, &mut p);
        let cs: Vec<&[u8]> = media::ps::packetize_rtp(&p, 1388).collect();
        let n = cs.len();
        frame_pkts.push(
            cs.into_iter()
                .enumerate()
                .map(|(j, c)| {
                    let mut v = Vec::with_capacity(c.len() + 12);
                    RtpHeader {
                        marker: j + 1 == n,
                        pt: 96,
                        seq: 0,
                        ts: i as u32 * 3600,
                        ssrc: 1,
                    }
                    .write(&mut v);
                    v.extend_from_slice(c);
                    v
                })
                .collect(),
        );
    }
    frame_pkts
}
