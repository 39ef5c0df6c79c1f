//! Writes the seed inputs of the media fuzz targets (fuzz/seeds/<target>/).
//! The layouts follow the harnesses in fuzz/fuzz_targets/.
//!
//!     cargo run -p gb28181-media --example write_fuzz_seeds -- fuzz/seeds

use std::path::Path;

use media::framing::{encode_interleaved, encode_rfc4571};
use media::h26x::Packetizer;
use media::ps::PsMuxer;
use media::rtp::RtpHeader;
use media::Codec;

/// NAL unit bytes with a fixed pattern free of `00 00`.
fn nal(header: &[u8], n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(header);
    out.extend((0..n).map(|i| (i as u8).wrapping_mul(37) | 1));
}

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) -> std::io::Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), data)?;
    println!("{}/{name}: {} bytes", d.display(), data.len());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".into());
    let dir = Path::new(&dir);

    let mut key = Vec::new();
    nal(&[0x67], 12, &mut key);
    nal(&[0x68], 4, &mut key);
    nal(&[0x65], 600, &mut key);
    let mut p_frame = Vec::new();
    nal(&[0x41], 300, &mut p_frame);

    // rtp_parse: one packet with CSRC, extension and padding; and a
    // sequence of H.264 RTP packets, each preceded by a 1-byte length.
    let mut pkt = vec![
        0xB2, 0xE0, 0x12, 0x34, 0, 0, 0x0E, 0x10, 0x14, 0x47, 0x1E, 0x41,
    ];
    pkt.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    pkt.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]);
    pkt.extend_from_slice(&p_frame[4..40]);
    pkt.extend_from_slice(&[0, 0, 3]);
    write(dir, "rtp_parse", "csrc_ext_padding", &pkt)?;
    let mut seq_file = Vec::new();
    let mut seq = 65_530u16;
    for (i, au) in [&key, &p_frame].into_iter().enumerate() {
        let payloads = Packetizer::h264(200).packetize(au);
        for (k, pl) in payloads.iter().enumerate() {
            let mut p = Vec::new();
            let h = RtpHeader {
                marker: k + 1 == payloads.len(),
                pt: 98,
                seq,
                ts: i as u32 * 3600,
                ssrc: 340_200_001,
            };
            h.write(&mut p);
            p.extend_from_slice(pl);
            seq_file.push(p.len() as u8);
            seq_file.extend_from_slice(&p);
            seq = seq.wrapping_add(1);
        }
    }
    write(dir, "rtp_parse", "h264_sequence", &seq_file)?;

    // rfc4571: control byte (bit 0: 8192 limit; the rest: read size), then
    // the TCP byte stream.
    let mut tcp = vec![0x0A];
    let mut rtp = Vec::new();
    RtpHeader {
        marker: true,
        pt: 96,
        seq: 1,
        ts: 0,
        ssrc: 1,
    }
    .write(&mut rtp);
    rtp.extend_from_slice(&p_frame[..100]);
    encode_rfc4571(&rtp, &mut tcp).expect("small");
    tcp.extend_from_slice(&[0, 0]);
    encode_interleaved(0, &rtp, &mut tcp).expect("small");
    encode_interleaved(1, &rtp[..28], &mut tcp).expect("small");
    encode_rfc4571(&rtp[..12], &mut tcp).expect("small");
    write(dir, "rfc4571", "mixed", &tcp)?;

    // ps_demux: control byte (bits 0-5: payload size, bit 6: small
    // maximum frame size, bit 7: markers), then the PS stream.
    let mut ps = vec![0x85];
    let mut m = PsMuxer::new(Codec::H264).with_audio(Codec::G711A);
    m.write_video(&key, 0, None, &mut ps);
    m.write_audio(&[0xD5; 160], 0, &mut ps);
    m.write_video(&p_frame, 3600, Some(0), &mut ps);
    write(dir, "ps_demux", "h264_gop", &ps)?;
    let mut ps = vec![0x3F];
    let mut key265 = Vec::new();
    nal(&[0x40, 0x01], 20, &mut key265);
    nal(&[0x42, 0x01], 30, &mut key265);
    nal(&[0x44, 0x01], 6, &mut key265);
    nal(&[0x26, 0x01], 900, &mut key265);
    PsMuxer::new(Codec::H265).write_video(&key265, 90_000, None, &mut ps);
    write(dir, "ps_demux", "h265_key", &ps)?;
    Ok(())
}
