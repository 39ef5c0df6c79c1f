//! Test media shared by the media tests and benchmark: access units out of
//! an Annex-B file, PS over RTP as a GB28181 camera sends it, and ffprobe's
//! frame count of a recording.

use std::{path::Path, process::Command};

use media::{ps::PsMuxer, rtp::RtpHeader, Codec};

/// Splits an Annex-B H.264 stream into access units at its AUD NAL units
/// (encode with `-bsf:v h264_metadata=aud=insert`), 4-byte start codes.
pub fn split_aus(annexb: &[u8]) -> Vec<Vec<u8>> {
    let mut aus: Vec<Vec<u8>> = Vec::new();
    for nal in media::h26x::split_annexb(annexb) {
        if nal.first().is_some_and(|b| b & 0x1f == 9) || aus.is_empty() {
            aus.push(Vec::new());
        }
        if let Some(au) = aus.last_mut() {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
    }
    aus
}

/// `n` synthetic H.264 access units of `size` bytes after the NAL header
/// (an IDR slice every 25 frames, non-IDR slices between), whose payload
/// never holds a zero byte and so no start code: media for tests that
/// count packets and frames rather than decode.
pub fn synthetic_aus(n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut au = vec![0, 0, 0, 1, if i % 25 == 0 { 0x65 } else { 0x41 }];
            au.extend((0..size).map(|j| ((i * 7 + j) % 250 + 1) as u8));
            au
        })
        .collect()
}

/// Each access unit as PS (PTS = frame x 3600), cut into 1388-byte RTP
/// payloads: PT 96, sequence numbers from `seq0`, timestamp = PTS, marker
/// on the last packet of a frame.
pub fn ps_rtp(aus: &[Vec<u8>], ssrc: u32, seq0: u16) -> Vec<Vec<u8>> {
    let mut mux = PsMuxer::new(Codec::H264);
    let mut out = Vec::new();
    let mut seq = seq0;
    for (i, au) in aus.iter().enumerate() {
        let mut ps = Vec::new();
        mux.write_video(au, i as u64 * 3600, None, &mut ps);
        let chunks: Vec<&[u8]> = media::ps::packetize_rtp(&ps, 1388).collect();
        for (j, c) in chunks.iter().enumerate() {
            let mut p = Vec::with_capacity(c.len() + 12);
            RtpHeader {
                marker: j + 1 == chunks.len(),
                pt: 96,
                seq,
                ts: i as u32 * 3600,
                ssrc,
            }
            .write(&mut p);
            p.extend_from_slice(c);
            out.push(p);
            seq = seq.wrapping_add(1);
        }
    }
    out
}

/// The RTP packets [`ps_rtp`] (and gb-sim, which muxes and cuts alike)
/// makes of each H.264 access unit, with whether it is a key frame: what
/// a relay that starts at a key frame passes on of each frame.
pub fn packets_per_frame(aus: &[Vec<u8>]) -> Vec<(u64, bool)> {
    let mut counts = Vec::with_capacity(aus.len());
    let mut n = 0;
    // The marker bit (second byte's top bit) closes a frame.
    for p in ps_rtp(aus, 0, 0) {
        n += 1;
        if p[1] & 0x80 != 0 {
            counts.push(n);
            n = 0;
        }
    }
    aus.iter()
        .zip(counts)
        .map(|(au, n)| (n, media::h26x::is_keyframe(Codec::H264, au)))
        .collect()
}

/// Frames ffprobe decodes in the first video stream of `path` (0 if none).
///
/// Where ffprobe cannot run (the arm64 VM of `cargo xtask vm-test`, which
/// sets `GATEWAY_TEST_NO_FFPROBE=1`), the frames are counted by parsing
/// the Annex-B file instead ([`annexb_frames`]): what was recorded is
/// compared frame for frame with what the simulator sent, but not decoded.
/// Without that variable a missing ffprobe is an error, never a silent
/// fallback.
pub fn ffprobe_frames(path: impl AsRef<Path>) -> u64 {
    let path = path.as_ref();
    if std::env::var_os("GATEWAY_TEST_NO_FFPROBE").is_some() && !crate::have_tools(&["ffprobe"]) {
        let data = std::fs::read(path).unwrap_or_default();
        let hevc = path.extension().is_some_and(|e| e == "h265" || e == "hevc");
        let n = annexb_frames(if hevc { Codec::H265 } else { Codec::H264 }, &data);
        eprintln!(
            "(no ffprobe here: {} frames counted by parsing {}, not decoded)",
            n,
            path.display()
        );
        return n;
    }
    assert!(
        crate::have_tools(&["ffprobe"]),
        "ffprobe is not installed (scripts/setup.sh installs it)"
    );
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Pictures in an Annex-B elementary stream: the VCL NAL units that start
/// a picture (H.264: `first_mb_in_slice` = 0, the slice header's first
/// bit set; H.265: `first_slice_segment_in_pic_flag`, the first bit after
/// the two-byte NAL header).
pub fn annexb_frames(codec: Codec, data: &[u8]) -> u64 {
    media::h26x::split_annexb(data)
        .filter(|nal| match codec {
            Codec::H265 => {
                media::h26x::h265_nal_type(nal).is_some_and(|t| t < 32)
                    && nal.get(2).is_some_and(|b| b & 0x80 != 0)
            }
            _ => {
                media::h26x::h264_nal_type(nal).is_some_and(|t| (1..=5).contains(&t))
                    && nal.get(1).is_some_and(|b| b & 0x80 != 0)
            }
        })
        .count() as u64
}

/// Runs ffmpeg on a lavfi test source (e.g. `testsrc=size=320x240:rate=25`)
/// into `out`; `args` (frame count, codec and its settings, output format)
/// go between the input and the output file.
pub fn ffmpeg_encode(out: &Path, source: &str, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(source)
        .args(args)
        .arg(out)
        .status()
        .map_err(|e| anyhow::anyhow!("running ffmpeg: {e}"))?;
    anyhow::ensure!(st.success(), "ffmpeg failed ({st})");
    Ok(())
}

/// A camera's worth of test media: `frames` frames of 320x240 at 25 fps,
/// a key frame every 25, no B-frames; `cam.h264` or `cam.h265` in `dir`.
pub fn camera_file(dir: &Path, frames: usize, hevc: bool) -> std::path::PathBuf {
    encode_camera(dir, frames, hevc, false)
}

/// [`camera_file`] (H.264) with an access unit delimiter before each
/// frame, so that [`split_aus`] cuts it into the frames a camera sends
/// (see [`packets_per_frame`]); `cam-aud.h264` in `dir`.
pub fn camera_file_aud(dir: &Path, frames: usize) -> std::path::PathBuf {
    encode_camera(dir, frames, false, true)
}

fn encode_camera(dir: &Path, frames: usize, hevc: bool, aud: bool) -> std::path::PathBuf {
    let out = dir.join(match (hevc, aud) {
        (true, _) => "cam.h265",
        (false, false) => "cam.h264",
        (false, true) => "cam-aud.h264",
    });
    if let Some(src) = std::env::var_os("GATEWAY_TEST_MEDIA_DIR") {
        // Encoded beforehand (by `cargo xtask vm-test`, on the host):
        // `<frames>-<name>` in that directory.
        let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let pre = Path::new(&src).join(format!("{frames}-{name}"));
        if pre.is_file() {
            std::fs::copy(&pre, &out).expect("copying pre-encoded test media");
            return out;
        }
        assert!(
            crate::have_tools(&["ffmpeg"]),
            "no {} (GATEWAY_TEST_MEDIA_DIR) and no ffmpeg to encode it",
            pre.display()
        );
    }
    let n = frames.to_string();
    let codec: &[&str] = if hevc {
        &[
            "-c:v",
            "libx265",
            "-x265-params",
            "keyint=25:bframes=0:log-level=error",
            "-f",
            "hevc",
        ]
    } else {
        &["-c:v", "libx264", "-g", "25", "-bf", "0", "-f", "h264"]
    };
    let mut args = vec!["-frames:v", n.as_str()];
    args.extend_from_slice(codec);
    if aud {
        args.extend_from_slice(&["-bsf:v", "h264_metadata=aud=insert"]);
    }
    ffmpeg_encode(&out, "testsrc=size=320x240:rate=25", &args).expect("ffmpeg");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser that stands in for ffprobe in the arm64 VM counts what
    /// ffprobe decodes, on ffmpeg's own H.264 and H.265.
    #[test]
    fn annexb_frame_count_agrees_with_ffprobe() {
        if !crate::have_tools(&["ffmpeg", "ffprobe"]) {
            eprintln!("SKIPPED annexb_frame_count_agrees_with_ffprobe: needs ffmpeg and ffprobe");
            return;
        }
        let dir = crate::sipp::TempDir::new("annexb-frames");
        for (hevc, codec) in [(false, Codec::H264), (true, Codec::H265)] {
            let f = camera_file(dir.path(), 37, hevc);
            let data = std::fs::read(&f).unwrap();
            assert_eq!(annexb_frames(codec, &data), 37, "{}", f.display());
            assert_eq!(ffprobe_frames(&f), 37, "{}", f.display());
            // A cut file: only the pictures whose start is in it.
            let cut = &data[..data.len() / 2];
            let n = annexb_frames(codec, cut);
            assert!(
                (1..37).contains(&n),
                "{n} pictures in half of {}",
                f.display()
            );
        }
    }
}
