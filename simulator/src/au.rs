//! Access units of an Annex-B H.264 / H.265 elementary stream.
//!
//! The codec is told by [`media::h26x::guess_codec`] (parameter sets, AUD
//! or SEI, else the first slice). Access units are split at access unit
//! delimiters when the stream has them; otherwise a new unit starts at the
//! first VCL NAL unit of each picture (H.264: `first_mb_in_slice == 0`,
//! H.265: `first_slice_segment_in_pic_flag == 1`), together with the
//! parameter sets / SEI / AUD that precede it.

use anyhow::{bail, Result};
use media::{
    h26x::{self, split_annexb},
    Codec,
};

/// The video of `--media`, cut into access units (Annex-B, 4-byte start
/// codes), ready to be muxed frame by frame.
#[derive(Debug, Clone)]
pub struct Media {
    pub codec: Codec,
    pub aus: Vec<Vec<u8>>,
    /// Access units that are random access points.
    pub keyframes: usize,
    /// Whether the units were split at AUDs.
    pub aud: bool,
}

impl Media {
    pub fn load(path: &std::path::Path) -> Result<Media> {
        let data = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Media::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Media> {
        let Some(codec) = detect_codec(data) else {
            bail!("not an Annex-B H.264 or H.265 elementary stream (no recognisable NAL units)");
        };
        let (aus, aud) = split_access_units(codec, data);
        if aus.is_empty() {
            bail!("no coded picture (VCL NAL unit) in the stream");
        }
        let keyframes = aus.iter().filter(|a| h26x::is_keyframe(codec, a)).count();
        Ok(Media {
            codec,
            aus,
            keyframes,
            aud,
        })
    }

    pub fn codec_name(&self) -> &'static str {
        codec_name(self.codec)
    }
}

pub fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::H265 => "h265",
        _ => "h264",
    }
}

/// H.264 or H.265, from the first NAL units of the stream.
pub fn detect_codec(data: &[u8]) -> Option<Codec> {
    match h26x::guess_codec(data)? {
        c @ (Codec::H264 | Codec::H265) => Some(c),
        _ => None,
    }
}

/// What a NAL unit means for access-unit boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Access unit delimiter.
    Aud,
    /// A slice; `true` if it is the first of its picture.
    Vcl(bool),
    /// Parameter sets, prefix SEI and the like: they open a new access
    /// unit when they follow a picture.
    Prefix,
    /// End of sequence/stream, filler, suffix SEI: part of the current unit.
    Suffix,
}

fn role(codec: Codec, nal: &[u8]) -> Role {
    // The first bit after the NAL header: first_mb_in_slice == 0 is the
    // ue(v) code "1"; first_slice_segment_in_pic_flag is a plain bit.
    let first_bit = |at: usize| nal.get(at).is_some_and(|b| b & 0x80 != 0);
    match codec {
        Codec::H265 => match (nal[0] >> 1) & 0x3F {
            35 => Role::Aud,
            0..=31 => Role::Vcl(first_bit(2)),
            36..=38 | 40 | 45..=47 | 56..=63 => Role::Suffix,
            _ => Role::Prefix, // VPS, SPS, PPS, prefix SEI, 41-44, 48-55
        },
        _ => match nal[0] & 0x1F {
            9 => Role::Aud,
            1 | 2 | 5 => Role::Vcl(first_bit(1)),
            3 | 4 => Role::Vcl(false), // data partitions B/C follow A
            6..=8 | 14..=18 => Role::Prefix,
            _ => Role::Suffix, // 10 end of seq, 11 end of stream, 12 filler, 19+, 0
        },
    }
}

/// Splits an Annex-B stream into access units; also tells whether AUDs
/// drove the split. Units without a slice are merged into their neighbour.
pub fn split_access_units(codec: Codec, data: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let nals: Vec<(&[u8], Role)> = split_annexb(data)
        .filter(|n| !n.is_empty())
        .map(|n| (n, role(codec, n)))
        .collect();
    let use_aud = nals.iter().any(|(_, r)| *r == Role::Aud);
    let mut aus: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut cur_has_vcl = false;
    // Prefix NAL units seen after the current unit's last slice: they open
    // the next unit if a new picture follows.
    let mut pending: Vec<u8> = Vec::new();
    // Each unit keeps the start code it had in the file (3 or 4 bytes), so
    // what is sent is the file's bytes.
    let push = |buf: &mut Vec<u8>, nal: &[u8]| {
        let off = (nal.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
        let sc = if off >= 4 && data.get(off - 4..off) == Some(&[0, 0, 0, 1][..]) {
            4
        } else {
            3
        };
        match data.get(off.saturating_sub(sc)..off + nal.len()) {
            Some(with_sc) if off >= sc => buf.extend_from_slice(with_sc),
            _ => {
                buf.extend_from_slice(&[0, 0, 0, 1]);
                buf.extend_from_slice(nal);
            }
        }
    };
    for (nal, r) in nals {
        let starts_unit = if use_aud {
            r == Role::Aud
        } else {
            matches!(r, Role::Vcl(true))
        };
        if starts_unit && cur_has_vcl {
            aus.push(std::mem::take(&mut cur));
            cur_has_vcl = false;
        }
        if use_aud {
            push(&mut cur, nal);
            cur_has_vcl |= matches!(r, Role::Vcl(_));
            continue;
        }
        match r {
            Role::Prefix | Role::Aud if cur_has_vcl => push(&mut pending, nal),
            Role::Vcl(_) => {
                cur.append(&mut pending);
                push(&mut cur, nal);
                cur_has_vcl = true;
            }
            _ => {
                if !pending.is_empty() {
                    push(&mut pending, nal);
                } else {
                    push(&mut cur, nal);
                }
            }
        }
    }
    cur.append(&mut pending);
    if cur_has_vcl {
        aus.push(cur);
    } else if let Some(last) = aus.last_mut() {
        // Trailing non-VCL units (end of stream, SEI) stay with the last picture.
        last.extend_from_slice(&cur);
    }
    (aus, use_aud)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, n) in nals.iter().enumerate() {
            // Mix 3- and 4-byte start codes.
            if i % 2 == 0 {
                v.extend_from_slice(&[0, 0, 0, 1]);
            } else {
                v.extend_from_slice(&[0, 0, 1]);
            }
            v.extend_from_slice(n);
        }
        v
    }

    /// The NAL units of an access unit (start codes, as in the file,
    /// checked by the callers through `aus.concat() == data`).
    fn with_sc(nals: &[&[u8]]) -> Vec<Vec<u8>> {
        nals.iter().map(|n| n.to_vec()).collect()
    }

    fn units(au: &[u8]) -> Vec<Vec<u8>> {
        split_annexb(au).map(|n| n.to_vec()).collect()
    }

    // H.264 NAL units. Slices: byte after the header has bit 7 set when
    // first_mb_in_slice == 0.
    const SPS: &[u8] = &[0x67, 0x42, 0xC0, 0x1E, 0xAA];
    const PPS: &[u8] = &[0x68, 0xCE, 0x3C, 0x80];
    const SEI: &[u8] = &[0x06, 0x05, 0x01, 0x22, 0x80];
    const AUD: &[u8] = &[0x09, 0xF0];
    const IDR0: &[u8] = &[0x65, 0x88, 0x84, 0x21]; // first slice
    const IDR1: &[u8] = &[0x65, 0x40, 0x84, 0x22]; // second slice (first_mb 1)
    const P0: &[u8] = &[0x41, 0x9A, 0x02, 0x03];
    const P1: &[u8] = &[0x41, 0x50, 0x02, 0x04];
    const EOS: &[u8] = &[0x0B];

    #[test]
    fn h264_without_aud_splits_at_first_slices() {
        let data = annexb(&[SPS, PPS, SEI, IDR0, IDR1, P0, P1, P0, SPS, PPS, IDR0, EOS]);
        let m = Media::parse(&data).unwrap();
        assert_eq!(m.codec, Codec::H264);
        assert!(!m.aud);
        assert_eq!(m.aus.len(), 4);
        assert_eq!(units(&m.aus[0]), with_sc(&[SPS, PPS, SEI, IDR0, IDR1]));
        assert_eq!(units(&m.aus[1]), with_sc(&[P0, P1]));
        assert_eq!(units(&m.aus[2]), with_sc(&[P0]));
        assert_eq!(units(&m.aus[3]), with_sc(&[SPS, PPS, IDR0, EOS]));
        assert_eq!(m.keyframes, 2);
        // Nothing is lost, reordered or changed (start codes as in the file).
        assert_eq!(m.aus.concat(), data);
    }

    #[test]
    fn h264_with_aud_splits_at_aud() {
        let data = annexb(&[AUD, SPS, PPS, IDR0, IDR1, AUD, P0, P1, AUD, SEI, P0]);
        let m = Media::parse(&data).unwrap();
        assert!(m.aud);
        assert_eq!(m.aus.len(), 3);
        assert_eq!(m.aus.concat(), data);
        assert_eq!(units(&m.aus[0]), with_sc(&[AUD, SPS, PPS, IDR0, IDR1]));
        assert_eq!(units(&m.aus[1]), with_sc(&[AUD, P0, P1]));
        assert_eq!(units(&m.aus[2]), with_sc(&[AUD, SEI, P0]));
        assert_eq!(m.keyframes, 1);
    }

    // H.265: header 2 bytes (type << 1, 0x01); the byte after holds
    // first_slice_segment_in_pic_flag in bit 7.
    const VPS: &[u8] = &[0x40, 0x01, 0x0C, 0x01];
    const HSPS: &[u8] = &[0x42, 0x01, 0x01, 0x01];
    const HPPS: &[u8] = &[0x44, 0x01, 0xC1, 0x72];
    const HSEI: &[u8] = &[0x4E, 0x01, 0x05, 0x10];
    const HSUFFIX_SEI: &[u8] = &[0x50, 0x01, 0x84, 0x10];
    const HAUD: &[u8] = &[0x46, 0x01, 0x50];
    const IDR_W: &[u8] = &[0x26, 0x01, 0xAF, 0x05]; // IDR_W_RADL, first
    const IDR_W2: &[u8] = &[0x26, 0x01, 0x20, 0x05]; // second segment
    const TRAIL: &[u8] = &[0x02, 0x01, 0xD0, 0x09]; // TRAIL_R, first
    const TRAIL2: &[u8] = &[0x02, 0x01, 0x40, 0x09];

    #[test]
    fn h265_without_aud() {
        let data = annexb(&[
            VPS,
            HSPS,
            HPPS,
            HSEI,
            IDR_W,
            IDR_W2,
            HSUFFIX_SEI,
            TRAIL,
            TRAIL2,
            TRAIL,
        ]);
        let m = Media::parse(&data).unwrap();
        assert_eq!(m.codec, Codec::H265);
        assert_eq!(m.aus.len(), 3);
        assert_eq!(
            units(&m.aus[0]),
            with_sc(&[VPS, HSPS, HPPS, HSEI, IDR_W, IDR_W2, HSUFFIX_SEI])
        );
        assert_eq!(units(&m.aus[1]), with_sc(&[TRAIL, TRAIL2]));
        assert_eq!(units(&m.aus[2]), with_sc(&[TRAIL]));
        assert_eq!(m.keyframes, 1);
    }

    #[test]
    fn h265_with_aud() {
        let data = annexb(&[HAUD, VPS, HSPS, HPPS, IDR_W, HAUD, TRAIL, TRAIL2]);
        let m = Media::parse(&data).unwrap();
        assert_eq!(m.codec, Codec::H265);
        assert!(m.aud);
        assert_eq!(m.aus.len(), 2);
        assert_eq!(m.aus.concat(), data);
        assert_eq!(units(&m.aus[1]), with_sc(&[HAUD, TRAIL, TRAIL2]));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Media::parse(b"hello world").is_err());
        assert!(Media::parse(&[]).is_err());
        // Parameter sets only: no picture.
        assert!(Media::parse(&annexb(&[SPS, PPS])).is_err());
    }
}
