//! GB/T 28181 media plane without I/O: RTP parsing, sequence statistics and
//! reordering ([`rtp`]), RTP over TCP framing ([`framing`]), the MPEG-2
//! Program Stream that GB28181 devices send ([`ps`]) and the H.264/H.265 RTP
//! payload formats ([`h26x`]).
//!
//! Everything here is a pure function or a small state machine fed with
//! bytes; time, when needed, is supplied by the caller. Nothing panics on
//! input from the network and every buffer is bounded.
//!
//! A device's PS stream in, frames out:
//!
//! ```
//! use media::ps::{packetize_rtp, PsDemuxer, PsMuxer};
//! use media::{rtp, Codec};
//!
//! // Sender side (a device simulator): SPS, PPS, IDR slice.
//! let au = [
//!     0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1E, // SPS
//!     0, 0, 0, 1, 0x68, 0xCE, // PPS
//!     0, 0, 0, 1, 0x65, 0x88, 0x84, // IDR slice
//! ];
//! let mut ps = Vec::new();
//! PsMuxer::new(Codec::H264).write_video(&au, 3600, None, &mut ps);
//! let mut packets = Vec::new();
//! let payloads: Vec<&[u8]> = packetize_rtp(&ps, 16).collect();
//! for (i, payload) in payloads.iter().enumerate() {
//!     let mut p = Vec::new();
//!     let marker = i + 1 == payloads.len();
//!     rtp::RtpHeader { marker, pt: 96, seq: i as u16, ts: 3600, ssrc: 340_200_001 }.write(&mut p);
//!     p.extend_from_slice(payload);
//!     packets.push(p);
//! }
//!
//! // Receiver side.
//! let mut demux = PsDemuxer::new();
//! let mut frames = Vec::new();
//! for p in &packets {
//!     let r = rtp::parse(p).expect("valid RTP");
//!     frames.extend(demux.push(r.payload, r.timestamp, r.marker));
//! }
//! assert_eq!(frames.len(), 1);
//! assert_eq!(frames[0].data, au);
//! assert_eq!((frames[0].codec, frames[0].pts, frames[0].keyframe), (Codec::H264, Some(3600), true));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod framing;
pub mod h26x;
pub mod ps;
pub mod rtp;

/// Whether a [`Frame`] carries video or audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A video access unit.
    Video,
    /// An audio frame (the payload of one audio PES packet).
    Audio,
}

/// Codec of an elementary stream, named after the MPEG-2 PSM `stream_type`
/// values used by GB/T 28181.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264 / AVC (stream type 0x1B).
    H264,
    /// H.265 / HEVC (stream type 0x24).
    H265,
    /// MPEG-4 Part 2 video (stream type 0x10).
    Mpeg4,
    /// SVAC video (stream type 0x80).
    Svac,
    /// G.711 A-law (stream type 0x90).
    G711A,
    /// G.711 mu-law (stream type 0x91).
    G711U,
    /// AAC with ADTS headers (stream type 0x0F).
    Aac,
    /// Any other stream type; 0 when the type is not known at all.
    Unknown(u8),
}

impl Codec {
    /// The codec a PSM `stream_type` names.
    pub fn from_stream_type(stream_type: u8) -> Codec {
        match stream_type {
            0x1B => Codec::H264,
            0x24 => Codec::H265,
            0x10 => Codec::Mpeg4,
            0x80 => Codec::Svac,
            0x90 => Codec::G711A,
            0x91 => Codec::G711U,
            0x0F => Codec::Aac,
            t => Codec::Unknown(t),
        }
    }

    /// The PSM `stream_type` of this codec.
    pub fn stream_type(self) -> u8 {
        match self {
            Codec::H264 => 0x1B,
            Codec::H265 => 0x24,
            Codec::Mpeg4 => 0x10,
            Codec::Svac => 0x80,
            Codec::G711A => 0x90,
            Codec::G711U => 0x91,
            Codec::Aac => 0x0F,
            Codec::Unknown(t) => t,
        }
    }
}

/// One complete media frame: a video access unit or an audio frame, as
/// produced by [`ps::PsDemuxer`] and [`h26x::Depacketizer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Video or audio.
    pub kind: FrameKind,
    /// Codec, from the program stream map or guessed from the data.
    pub codec: Codec,
    /// Presentation time stamp (90 kHz, 33 bits) when the stream carried one.
    pub pts: Option<u64>,
    /// Decoding time stamp (90 kHz, 33 bits) when the stream carried one.
    pub dts: Option<u64>,
    /// RTP timestamp of the packet in which the frame started.
    pub rtp_timestamp: u32,
    /// A random access point: H.264 IDR or SPS present, H.265 IRAP or VPS
    /// present, MPEG-4 VOL or I-VOP; every audio frame.
    pub keyframe: bool,
    /// The elementary stream bytes (Annex-B for H.264/H.265).
    pub data: Vec<u8>,
}

/// Deterministic pseudo-random numbers for tests (xorshift64*).
#[cfg(test)]
pub(crate) mod testutil {
    /// A xorshift64* generator.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed.max(1))
        }

        pub fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform in `lo..=hi`.
        pub fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
        }

        pub fn byte(&mut self) -> u8 {
            (self.next_u64() >> 56) as u8
        }

        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.byte()).collect()
        }
    }
}
