//! H.264 and H.265 elementary streams: Annex-B splitting, NAL unit type
//! helpers, and the RTP payload formats of RFC 6184 (H.264,
//! packetization-mode 1: single NAL unit, STAP-A, FU-A) and RFC 7798 (H.265
//! without DONL: single NAL unit, AP, FU).

use std::sync::OnceLock;

use memchr::memmem::Finder;

use crate::{Codec, Frame, FrameKind};

/// The start code [`Depacketizer`] writes before every NAL unit.
pub const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Default largest access unit a [`Depacketizer`] assembles.
pub const DEFAULT_MAX_AU_SIZE: usize = 8 << 20;

fn start_code_finder() -> &'static Finder<'static> {
    static F: OnceLock<Finder<'static>> = OnceLock::new();
    F.get_or_init(|| Finder::new(&[0, 0, 1]))
}

/// Position of the next `00 00 01` in `data`.
pub(crate) fn find_start_code(data: &[u8]) -> Option<usize> {
    start_code_finder().find(data)
}

/// Iterator over the NAL units of an Annex-B byte stream (see
/// [`split_annexb`]).
#[derive(Clone, Debug)]
pub struct AnnexB<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for AnnexB<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.pos < self.data.len() {
            let start = self.pos;
            let (mut end, next) = match find_start_code(&self.data[start..]) {
                Some(i) => (start + i, start + i + 3),
                None => (self.data.len(), self.data.len()),
            };
            // Trailing zeros belong to a 4-byte start code or are
            // trailing_zero_8bits; a NAL unit never ends in 0x00.
            while end > start && self.data[end - 1] == 0 {
                end -= 1;
            }
            self.pos = next;
            if end > start {
                return Some(&self.data[start..end]);
            }
        }
        None
    }
}

/// The NAL units of an Annex-B stream, without their 3- or 4-byte start
/// codes. Bytes before the first start code count as a NAL unit; empty units
/// are skipped.
pub fn split_annexb(data: &[u8]) -> AnnexB<'_> {
    AnnexB { data, pos: 0 }
}

/// H.264 `nal_unit_type` (5 bits) of a NAL unit.
pub fn h264_nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1F)
}

/// H.265 `nal_unit_type` (6 bits) of a NAL unit.
pub fn h265_nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| (b >> 1) & 0x3F)
}

/// The NAL units of an access unit as slices starting at their header and
/// running to the end of `au` (only the first bytes are meant to be read):
/// cheap, it never scans past the NAL unit the caller stops at.
fn nal_headers(au: &[u8]) -> impl Iterator<Item = &[u8]> {
    let lead = (au.first().is_some_and(|&b| b != 0)).then_some(au);
    let mut rest = au;
    let coded = std::iter::from_fn(move || loop {
        let i = find_start_code(rest)?;
        rest = &rest[i + 3..];
        if rest.first().is_some_and(|&b| b != 0) {
            return Some(rest);
        }
    });
    lead.into_iter().chain(coded)
}

/// Whether an access unit is a random access point: H.264 with an IDR slice
/// (type 5) or an SPS (7); H.265 with an IRAP picture (16..=21) or a VPS
/// (32); MPEG-4 Part 2 with a VOL header or an I-VOP. Other codecs: false.
/// Stops at the first slice, so it is cheap on large frames.
pub fn is_keyframe(codec: Codec, au: &[u8]) -> bool {
    match codec {
        Codec::H264 => {
            let mut sps = false;
            for nal in nal_headers(au) {
                match nal[0] & 0x1F {
                    5 => return true,
                    7 => sps = true,
                    1..=4 => return sps,
                    _ => {}
                }
            }
            sps
        }
        Codec::H265 => {
            for nal in nal_headers(au) {
                match (nal[0] >> 1) & 0x3F {
                    16..=21 | 32 => return true,
                    0..=31 => return false,
                    _ => {}
                }
            }
            false
        }
        Codec::Mpeg4 => {
            let mut rest = au;
            while let Some(i) = find_start_code(rest) {
                match (rest.get(i + 3), rest.get(i + 4)) {
                    (Some(0x20..=0x2F), _) => return true,
                    (Some(0xB6), Some(b)) => return b >> 6 == 0,
                    (Some(0xB6), None) => return false,
                    _ => {}
                }
                rest = &rest[i + 3..];
            }
            false
        }
        _ => false,
    }
}

/// Guesses H.264 or H.265 from the NAL unit headers of an Annex-B access
/// unit; `None` when neither fits. Parameter sets, AUD and SEI decide;
/// otherwise the first slice header does.
pub fn guess_codec(au: &[u8]) -> Option<Codec> {
    // An H.265 header: forbidden bit 0, nuh_layer_id 0, TemporalId + 1 > 0.
    let h265_header =
        |n: &[u8]| n.len() >= 2 && n[0] & 0x81 == 0 && n[1] >> 3 == 0 && n[1] & 7 != 0;
    for nal in nal_headers(au).take(16) {
        if nal[0] & 0x80 != 0 {
            continue;
        }
        let h5 = h265_header(nal);
        let t265 = (nal[0] >> 1) & 0x3F;
        let t264 = nal[0] & 0x1F;
        if h5 && matches!(t265, 32..=35 | 39 | 40) {
            // VPS, SPS, PPS, AUD, SEI.
            return Some(Codec::H265);
        }
        if !h5 && matches!(t264, 7..=9) {
            // SPS, PPS, AUD.
            return Some(Codec::H264);
        }
        if matches!(t264, 1 | 5) {
            // A slice (odd first byte: never an H.265 layer-0 header).
            return Some(Codec::H264);
        }
        if h5 && matches!(t265, 0 | 1 | 16..=21) {
            // TRAIL_N, TRAIL_R or IRAP slice.
            return Some(Codec::H265);
        }
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    H264,
    H265,
}

impl Flavor {
    fn codec(self) -> Codec {
        match self {
            Flavor::H264 => Codec::H264,
            Flavor::H265 => Codec::H265,
        }
    }
}

/// Counters of a [`Depacketizer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DepacketizerStats {
    /// RTP payloads pushed.
    pub packets: u64,
    /// Access units emitted.
    pub frames: u64,
    /// NAL units dropped because a fragment was lost (FU start, middle or
    /// end missing).
    pub dropped_nals: u64,
    /// Malformed or unsupported payloads (STAP-B, MTAP, PACI, truncated
    /// aggregation packets) ignored.
    pub malformed: u64,
    /// Access units dropped for being larger than the maximum size.
    pub dropped_frames: u64,
}

/// Reassembles H.264 (RFC 6184) or H.265 (RFC 7798) RTP payloads of one
/// stream, pushed in sequence order, into Annex-B access units (every NAL
/// unit preceded by `00 00 00 01`).
///
/// An access unit ends with the marker bit, or when the RTP timestamp
/// changes (senders with wrong markers). A sequence gap inside a
/// fragmented NAL unit drops that NAL unit (counted); the rest of the access
/// unit is kept.
#[derive(Debug)]
pub struct Depacketizer {
    flavor: Flavor,
    au: Vec<u8>,
    au_ts: Option<u32>,
    /// Offset in `au` where the fragmented NAL unit being assembled starts.
    fu_start: Option<usize>,
    /// Fragments of a NAL unit already counted as dropped are ignored.
    dropping: bool,
    last_seq: Option<u16>,
    max_au_size: usize,
    oversized: bool,
    stats: DepacketizerStats,
}

impl Depacketizer {
    /// An H.264 (RFC 6184) depacketizer.
    pub fn h264() -> Self {
        Self::new(Flavor::H264)
    }

    /// An H.265 (RFC 7798) depacketizer.
    pub fn h265() -> Self {
        Self::new(Flavor::H265)
    }

    fn new(flavor: Flavor) -> Self {
        Depacketizer {
            flavor,
            au: Vec::new(),
            au_ts: None,
            fu_start: None,
            dropping: false,
            last_seq: None,
            max_au_size: DEFAULT_MAX_AU_SIZE,
            oversized: false,
            stats: DepacketizerStats::default(),
        }
    }

    /// Sets the largest access unit kept (larger ones are dropped and
    /// counted).
    pub fn with_max_au_size(mut self, max: usize) -> Self {
        self.max_au_size = max;
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> DepacketizerStats {
        self.stats
    }

    /// Adds the payload of one RTP packet; returns the access units it
    /// completed (at most two: the previous one on a timestamp change, and
    /// this one on a marker).
    pub fn push(&mut self, payload: &[u8], seq: u16, timestamp: u32, marker: bool) -> Vec<Frame> {
        let mut out = Vec::new();
        self.stats.packets += 1;
        if self.au_ts.is_some_and(|t| t != timestamp) {
            self.finish(&mut out);
        }
        let gap = self.last_seq.is_some_and(|l| l.wrapping_add(1) != seq);
        self.last_seq = Some(seq);
        if gap && self.fu_start.is_some() {
            self.abandon_fu();
            self.dropping = true;
        }
        self.au_ts = Some(timestamp);
        match self.flavor {
            Flavor::H264 => self.push_h264(payload),
            Flavor::H265 => self.push_h265(payload),
        }
        if marker {
            self.finish(&mut out);
        }
        out
    }

    /// Emits the access unit in progress (end of stream).
    pub fn flush(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        self.finish(&mut out);
        out
    }

    fn push_h264(&mut self, p: &[u8]) {
        let Some(&b0) = p.first() else {
            self.stats.malformed += 1;
            return;
        };
        match b0 & 0x1F {
            1..=23 => {
                self.end_fu();
                self.append_nal(&[], p);
            }
            24 => {
                self.end_fu();
                self.aggregate(&p[1..]);
            }
            28 => {
                if p.len() < 2 {
                    self.stats.malformed += 1;
                    return;
                }
                let fh = p[1];
                let header = [(b0 & 0xE0) | (fh & 0x1F)];
                self.fragment(fh & 0x80 != 0, fh & 0x40 != 0, &header, &p[2..]);
            }
            _ => {
                self.end_fu();
                self.stats.malformed += 1;
            }
        }
    }

    fn push_h265(&mut self, p: &[u8]) {
        if p.len() < 2 {
            self.stats.malformed += 1;
            return;
        }
        match (p[0] >> 1) & 0x3F {
            0..=47 => {
                self.end_fu();
                self.append_nal(&[], p);
            }
            48 => {
                self.end_fu();
                self.aggregate(&p[2..]);
            }
            49 => {
                if p.len() < 3 {
                    self.stats.malformed += 1;
                    return;
                }
                let fh = p[2];
                let header = [(p[0] & 0x81) | ((fh & 0x3F) << 1), p[1]];
                self.fragment(fh & 0x80 != 0, fh & 0x40 != 0, &header, &p[3..]);
            }
            _ => {
                self.end_fu();
                self.stats.malformed += 1;
            }
        }
    }

    /// STAP-A / AP body: 16-bit size, NAL unit, repeated.
    fn aggregate(&mut self, mut body: &[u8]) {
        while body.len() >= 2 {
            let n = u16::from_be_bytes([body[0], body[1]]) as usize;
            let Some(nal) = body.get(2..2 + n) else {
                self.stats.malformed += 1;
                return;
            };
            if n > 0 {
                self.append_nal(&[], nal);
            }
            body = &body[2 + n..];
        }
        if !body.is_empty() {
            self.stats.malformed += 1;
        }
    }

    fn fragment(&mut self, start: bool, end: bool, header: &[u8], data: &[u8]) {
        if start {
            if self.fu_start.is_some() {
                // The previous fragmented NAL unit never ended.
                self.abandon_fu();
            }
            self.dropping = false;
            self.fu_start = Some(self.au.len());
            self.append_nal(header, data);
        } else if self.fu_start.is_some() {
            self.append(data);
        } else {
            // A middle or end fragment without its start.
            if !self.dropping {
                self.stats.dropped_nals += 1;
                self.dropping = true;
            }
            if end {
                self.dropping = false;
            }
            return;
        }
        if end {
            self.fu_start = None;
        }
    }

    /// A non-fragment packet arrived: a fragmented NAL unit still open lost
    /// its end.
    fn end_fu(&mut self) {
        if self.fu_start.is_some() {
            self.abandon_fu();
        }
        self.dropping = false;
    }

    fn abandon_fu(&mut self) {
        if let Some(at) = self.fu_start.take() {
            self.au.truncate(at);
            self.stats.dropped_nals += 1;
        }
    }

    fn append_nal(&mut self, header: &[u8], data: &[u8]) {
        self.append(&START_CODE);
        self.append(header);
        self.append(data);
    }

    fn append(&mut self, data: &[u8]) {
        if self.oversized {
            return;
        }
        if self.au.len() + data.len() > self.max_au_size {
            self.oversized = true;
            self.au = Vec::new();
            self.fu_start = None;
            return;
        }
        self.au.extend_from_slice(data);
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        if self.fu_start.is_some() {
            self.abandon_fu();
        }
        let ts = self.au_ts.take().unwrap_or(0);
        if self.oversized {
            self.oversized = false;
            self.stats.dropped_frames += 1;
            self.au.clear();
            return;
        }
        if self.au.is_empty() {
            return;
        }
        let cap = self.au.len();
        let data = std::mem::replace(&mut self.au, Vec::with_capacity(cap));
        let codec = self.flavor.codec();
        self.stats.frames += 1;
        out.push(Frame {
            kind: FrameKind::Video,
            codec,
            pts: None,
            dts: None,
            rtp_timestamp: ts,
            keyframe: is_keyframe(codec, &data),
            data,
        });
    }
}

/// Splits Annex-B access units into H.264 (RFC 6184, packetization-mode 1)
/// or H.265 (RFC 7798) RTP payloads of at most `max_payload` bytes: small
/// NAL units that fit together are aggregated (STAP-A / AP), large ones
/// fragmented (FU-A / FU), the rest sent as single NAL unit packets.
#[derive(Clone, Copy, Debug)]
pub struct Packetizer {
    flavor: Flavor,
    max_payload: usize,
}

impl Packetizer {
    /// H.264 payloads of at most `max_payload` bytes (at least 4).
    pub fn h264(max_payload: usize) -> Self {
        Packetizer {
            flavor: Flavor::H264,
            max_payload: max_payload.max(4),
        }
    }

    /// H.265 payloads of at most `max_payload` bytes (at least 5).
    pub fn h265(max_payload: usize) -> Self {
        Packetizer {
            flavor: Flavor::H265,
            max_payload: max_payload.max(5),
        }
    }

    /// The RTP payloads of one access unit, in order. The sender gives them
    /// all the same timestamp and sets the marker on the last.
    pub fn packetize(&self, au: &[u8]) -> Vec<Vec<u8>> {
        let max = self.max_payload;
        let hdr = match self.flavor {
            Flavor::H264 => 1,
            Flavor::H265 => 2,
        };
        let nals: Vec<&[u8]> = split_annexb(au).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < nals.len() {
            let nal = nals[i];
            if nal.len() > max {
                self.fragment(nal, &mut out);
                i += 1;
                continue;
            }
            // Aggregate the following NAL units that fit.
            let mut size = hdr + 2 + nal.len();
            let mut j = i + 1;
            while j < nals.len() && size + 2 + nals[j].len() <= max {
                size += 2 + nals[j].len();
                j += 1;
            }
            if j - i < 2 || nal.len() < hdr {
                out.push(nal.to_vec());
                i += 1;
                continue;
            }
            let mut p = Vec::with_capacity(size);
            match self.flavor {
                Flavor::H264 => {
                    let f = nals[i..j].iter().fold(0, |a, n| a | (n[0] & 0x80));
                    let nri = nals[i..j].iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                    p.push(f | nri | 24);
                }
                Flavor::H265 => {
                    p.push((nal[0] & 0x81) | (48 << 1));
                    p.push(nal[1]);
                }
            }
            for n in &nals[i..j] {
                p.extend_from_slice(&(n.len() as u16).to_be_bytes());
                p.extend_from_slice(n);
            }
            out.push(p);
            i = j;
        }
        out
    }

    fn fragment(&self, nal: &[u8], out: &mut Vec<Vec<u8>>) {
        let (prefix, body): (Vec<u8>, &[u8]) = match self.flavor {
            Flavor::H264 => (vec![(nal[0] & 0xE0) | 28, nal[0] & 0x1F], &nal[1..]),
            Flavor::H265 => (
                vec![(nal[0] & 0x81) | (49 << 1), nal[1], (nal[0] >> 1) & 0x3F],
                &nal[2..],
            ),
        };
        let fh = prefix.len() - 1;
        let chunk = self.max_payload - prefix.len();
        let n = body.len().div_ceil(chunk);
        for (k, part) in body.chunks(chunk).enumerate() {
            let mut p = Vec::with_capacity(prefix.len() + part.len());
            p.extend_from_slice(&prefix);
            if k == 0 {
                p[fh] |= 0x80;
            }
            if k + 1 == n {
                p[fh] |= 0x40;
            }
            p.extend_from_slice(part);
            out.push(p);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// Random NAL body bytes without `00 00` (so no start code or
    /// emulation-prevention pattern can appear), ending in a non-zero byte.
    pub fn body(rng: &mut Rng, n: usize) -> Vec<u8> {
        let mut v = rng.bytes(n);
        for i in 0..n {
            if v[i] == 0 && (i == 0 || v[i - 1] == 0 || i + 1 == n) {
                v[i] = 0x5A;
            }
        }
        v
    }

    /// An H.264 access unit with 4-byte start codes: for a keyframe SPS,
    /// PPS, SEI and an IDR slice, otherwise a non-IDR slice; `slice` bytes
    /// of slice data, possibly in several slices.
    pub fn h264_au(rng: &mut Rng, key: bool, slice: usize) -> Vec<u8> {
        let mut au = Vec::new();
        let mut nal = |hdr: &[u8], n: usize, rng: &mut Rng| {
            au.extend_from_slice(&START_CODE);
            au.extend_from_slice(hdr);
            au.extend_from_slice(&body(rng, n));
        };
        nal(&[0x09], 1, rng);
        if key {
            nal(&[0x67], 12, rng);
            nal(&[0x68], 4, rng);
            nal(&[0x06], 20, rng);
            nal(&[0x65], slice, rng);
        } else {
            nal(&[0x41], slice / 2 + 1, rng);
            nal(&[0x41], slice / 2 + 1, rng);
        }
        au
    }

    /// An H.265 access unit (VPS, SPS, PPS, IDR_W_RADL or TRAIL_R).
    pub fn h265_au(rng: &mut Rng, key: bool, slice: usize) -> Vec<u8> {
        let mut au = Vec::new();
        let mut nal = |hdr: &[u8], n: usize, rng: &mut Rng| {
            au.extend_from_slice(&START_CODE);
            au.extend_from_slice(hdr);
            au.extend_from_slice(&body(rng, n));
        };
        nal(&[0x46, 0x01], 1, rng);
        if key {
            nal(&[0x40, 0x01], 20, rng);
            nal(&[0x42, 0x01], 40, rng);
            nal(&[0x44, 0x01], 6, rng);
            nal(&[0x26, 0x01], slice, rng);
        } else {
            nal(&[0x02, 0x01], slice, rng);
        }
        au
    }

    #[test]
    fn split_annexb_variants() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 1, 0x65, 4, 5, 0, 0,
        ];
        let nals: Vec<&[u8]> = split_annexb(&data).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4, 5]]);
        // No start code at all: the whole input is one NAL unit.
        assert_eq!(
            split_annexb(&[0x41, 9]).collect::<Vec<_>>(),
            vec![&[0x41, 9][..]]
        );
        // Leading bytes before the first start code, empty units.
        let d = [0x09, 0xF0, 0, 0, 1, 0, 0, 1, 0x41];
        assert_eq!(
            split_annexb(&d).collect::<Vec<_>>(),
            vec![&[0x09, 0xF0][..], &[0x41]]
        );
        assert_eq!(split_annexb(&[]).count(), 0);
        assert_eq!(split_annexb(&[0, 0, 1]).count(), 0);
        assert_eq!(h264_nal_type(&[0x65]), Some(5));
        assert_eq!(h265_nal_type(&[0x26, 0x01]), Some(19));
        assert_eq!(h264_nal_type(&[]), None);
    }

    #[test]
    fn keyframes_and_guessing() {
        let mut rng = Rng::new(1);
        let k = h264_au(&mut rng, true, 100);
        let p = h264_au(&mut rng, false, 100);
        assert!(is_keyframe(Codec::H264, &k));
        assert!(!is_keyframe(Codec::H264, &p));
        assert_eq!(guess_codec(&k), Some(Codec::H264));
        assert_eq!(guess_codec(&p), Some(Codec::H264));
        let k = h265_au(&mut rng, true, 100);
        let p = h265_au(&mut rng, false, 100);
        assert!(is_keyframe(Codec::H265, &k));
        assert!(!is_keyframe(Codec::H265, &p));
        assert_eq!(guess_codec(&k), Some(Codec::H265));
        assert_eq!(guess_codec(&p), Some(Codec::H265));
        // Slices only, without AUD; H.264 SEI first.
        assert_eq!(guess_codec(&[0, 0, 1, 0x41, 0x9A, 0x10]), Some(Codec::H264));
        assert_eq!(
            guess_codec(&[0, 0, 1, 0x06, 0x05, 0x10, 0, 0, 1, 0x41, 0x9A]),
            Some(Codec::H264)
        );
        assert_eq!(guess_codec(&[0, 0, 1, 0x02, 0x01, 0xD0]), Some(Codec::H265));
        assert_eq!(guess_codec(&[0, 0, 1, 0x2A, 0x01, 0xD0]), Some(Codec::H265));
        assert_eq!(guess_codec(&[0xFF, 0xF1, 0x50]), None);
        // H.264 SPS alone is a keyframe; CRA is an IRAP.
        assert!(is_keyframe(Codec::H264, &[0, 0, 1, 0x67, 1]));
        assert!(is_keyframe(Codec::H265, &[0, 0, 1, 0x2A, 1, 7]));
        // MPEG-4: I-VOP vs P-VOP.
        assert!(is_keyframe(Codec::Mpeg4, &[0, 0, 1, 0xB6, 0x10]));
        assert!(!is_keyframe(Codec::Mpeg4, &[0, 0, 1, 0xB6, 0x50]));
        assert!(is_keyframe(
            Codec::Mpeg4,
            &[0, 0, 1, 0xB0, 1, 0, 0, 1, 0x20]
        ));
    }

    /// Packetizes, wraps in sequence numbers, depacketizes.
    fn round_trip(p: &Packetizer, d: &mut Depacketizer, aus: &[Vec<u8>]) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut seq = 65_500u16;
        for (i, au) in aus.iter().enumerate() {
            let pkts = p.packetize(au);
            for (k, pl) in pkts.iter().enumerate() {
                assert!(pl.len() <= p.max_payload);
                frames.extend(d.push(pl, seq, i as u32 * 3600, k + 1 == pkts.len()));
                seq = seq.wrapping_add(1);
            }
        }
        frames.extend(d.flush());
        frames
    }

    #[test]
    fn h264_round_trip() {
        let mut rng = Rng::new(2);
        for mtu in [4usize, 5, 100, 1188, 1400] {
            let aus: Vec<Vec<u8>> = (0..12)
                .map(|i| h264_au(&mut rng, i % 5 == 0, [1, 50, 1500, 20_000][i % 4]))
                .collect();
            let mut d = Depacketizer::h264();
            let frames = round_trip(&Packetizer::h264(mtu), &mut d, &aus);
            assert_eq!(frames.len(), aus.len(), "mtu {mtu}");
            for (i, (f, au)) in frames.iter().zip(&aus).enumerate() {
                assert_eq!(&f.data, au, "mtu {mtu} au {i}");
                assert_eq!(f.keyframe, i % 5 == 0);
                assert_eq!(f.codec, Codec::H264);
                assert_eq!(f.rtp_timestamp, i as u32 * 3600);
            }
            let s = d.stats();
            assert_eq!((s.dropped_nals, s.malformed, s.frames), (0, 0, 12));
        }
    }

    #[test]
    fn h265_round_trip() {
        let mut rng = Rng::new(3);
        for mtu in [5usize, 6, 100, 1400] {
            let aus: Vec<Vec<u8>> = (0..12)
                .map(|i| h265_au(&mut rng, i % 4 == 0, [1, 50, 1500, 70_000][i % 4]))
                .collect();
            let mut d = Depacketizer::h265();
            let frames = round_trip(&Packetizer::h265(mtu), &mut d, &aus);
            assert_eq!(frames.len(), aus.len(), "mtu {mtu}");
            for (i, (f, au)) in frames.iter().zip(&aus).enumerate() {
                assert_eq!(&f.data, au, "mtu {mtu} au {i}");
                assert_eq!(f.keyframe, i % 4 == 0);
                assert_eq!(f.codec, Codec::H265);
            }
            assert_eq!(d.stats().dropped_nals, 0);
        }
    }

    #[test]
    fn aggregation_is_used() {
        let mut rng = Rng::new(4);
        let au = h264_au(&mut rng, true, 3000);
        let pk = Packetizer::h264(1400).packetize(&au);
        assert_eq!(pk[0][0] & 0x1F, 24, "AUD+SPS+PPS+SEI in one STAP-A");
        assert!(pk[1..].iter().all(|p| p[0] & 0x1F == 28));
        let au = h265_au(&mut rng, true, 3000);
        let pk = Packetizer::h265(1400).packetize(&au);
        assert_eq!((pk[0][0] >> 1) & 0x3F, 48);
        assert!(pk[1..].iter().all(|p| (p[0] >> 1) & 0x3F == 49));
    }

    /// Drops the packet at index `lose` of an access unit's packets.
    fn with_loss(
        pk: &Packetizer,
        d: &mut Depacketizer,
        au: &[u8],
        lose: usize,
    ) -> (Vec<Frame>, usize) {
        let pkts = pk.packetize(au);
        let mut frames = Vec::new();
        for (k, pl) in pkts.iter().enumerate() {
            if k != lose {
                frames.extend(d.push(pl, k as u16, 9000, k + 1 == pkts.len()));
            }
        }
        frames.extend(d.flush());
        (frames, pkts.len())
    }

    #[test]
    fn lost_fragment_drops_that_nal() {
        let mut rng = Rng::new(5);
        let au = h264_au(&mut rng, true, 5000);
        let nals: Vec<&[u8]> = split_annexb(&au).collect();
        let pk = Packetizer::h264(1000);
        // Packet 0 is the STAP-A, 1..=6 the FU-A of the IDR slice.
        for lose in 1..=6 {
            let mut d = Depacketizer::h264();
            let (frames, n) = with_loss(&pk, &mut d, &au, lose);
            assert_eq!(n, 7);
            assert_eq!(d.stats().dropped_nals, 1, "lose {lose}");
            assert_eq!(frames.len(), 1);
            let got: Vec<&[u8]> = split_annexb(&frames[0].data).collect();
            assert_eq!(got, nals[..4].to_vec(), "lose {lose}: the slice is gone");
        }
        // H.265, losing the last fragment (then the marker is lost too:
        // the access unit ends at flush).
        let au = h265_au(&mut rng, false, 5000);
        let pk = Packetizer::h265(1000);
        let mut d = Depacketizer::h265();
        let (frames, n) = with_loss(&pk, &mut d, &au, 6);
        assert_eq!(n, 7);
        assert_eq!(d.stats().dropped_nals, 1);
        assert_eq!(
            split_annexb(&frames[0].data).count(),
            1,
            "only the AUD is left"
        );
    }

    #[test]
    fn lost_fragment_then_next_nal_is_kept() {
        // Two large slices; losing a middle fragment of the first keeps the
        // second.
        let mut rng = Rng::new(6);
        let au = h264_au(&mut rng, false, 6000);
        let nals: Vec<&[u8]> = split_annexb(&au).collect();
        assert_eq!(nals.len(), 3);
        let pk = Packetizer::h264(1000);
        let mut d = Depacketizer::h264();
        let (frames, _) = with_loss(&pk, &mut d, &au, 2);
        assert_eq!(d.stats().dropped_nals, 1);
        let got: Vec<&[u8]> = split_annexb(&frames[0].data).collect();
        assert_eq!(got, vec![nals[0], nals[2]]);
    }

    #[test]
    fn timestamp_change_without_marker_splits() {
        let mut rng = Rng::new(8);
        let a = h264_au(&mut rng, true, 10);
        let b = h264_au(&mut rng, false, 10);
        let pk = Packetizer::h264(1400);
        let mut d = Depacketizer::h264();
        let mut frames = Vec::new();
        frames.extend(d.push(&pk.packetize(&a)[0], 1, 100, false));
        frames.extend(d.push(&pk.packetize(&b)[0], 2, 200, false));
        assert_eq!(frames.len(), 1);
        frames.extend(d.flush());
        assert_eq!(frames[0].data, a);
        assert_eq!(frames[1].data, b);
        assert_eq!(frames[1].rtp_timestamp, 200);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng::new(9);
        let mut d4 = Depacketizer::h264().with_max_au_size(10_000);
        let mut d5 = Depacketizer::h265().with_max_au_size(10_000);
        for i in 0..20_000u32 {
            let n = rng.range(0, 40);
            let p = rng.bytes(n);
            let m = rng.range(0, 3) == 0;
            for f in
                d4.push(&p, i as u16, i / 5, m)
                    .into_iter()
                    .chain(d5.push(&p, i as u16, i / 5, m))
            {
                assert!(f.data.len() <= 10_000);
            }
        }
        assert!(d4.stats().malformed > 0 && d5.stats().malformed > 0);
    }
}
