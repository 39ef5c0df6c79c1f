//! MPEG-2 Program Stream (ISO/IEC 13818-1) as GB/T 28181 devices send it
//! over RTP (payload type 96): a demuxer that turns RTP payloads into
//! [`Frame`]s, and a muxer plus RTP cutter for senders and tests.
//!
//! Layout on the wire: each video frame is one pack (`00 00 01 BA`), key
//! frames add a system header (`BB`) and a program stream map (`BC`), then
//! PES packets (`E0` video, `C0` audio). Large frames span several PES
//! packets. The byte stream is cut into RTP payloads without regard to any
//! of these boundaries.

use crate::h26x::{self, find_start_code};
use crate::{Codec, Frame, FrameKind};

/// Default largest frame the demuxer assembles (8 MiB).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 << 20;
/// Largest PES payload the muxer writes per PES packet.
pub const MAX_PES_PAYLOAD: usize = 0xFF00;
/// Slack over the maximum frame size that the input buffer may hold.
const BUFFER_SLACK: usize = 64 << 10;

/// Counters of a [`PsDemuxer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PsStats {
    /// Pack headers parsed.
    pub packs: u64,
    /// PES packets parsed (all stream ids, skipped ones included).
    pub pes: u64,
    /// Frames emitted.
    pub frames: u64,
    /// Times the demuxer lost sync and scanned for a start code.
    pub resyncs: u64,
    /// PES packets cut short (by a start code inside a video PES, by
    /// [`PsDemuxer::discontinuity`], by [`PsDemuxer::flush`] or by the
    /// buffer limit).
    pub truncated: u64,
    /// Impossible lengths (PES header longer than its packet, PES longer
    /// than the maximum frame size, PSM lengths beyond the packet).
    pub absurd_lengths: u64,
    /// Bytes thrown away while resynchronising.
    pub bytes_skipped: u64,
    /// Frames dropped: larger than the maximum frame size, or damaged
    /// (truncated PES, discontinuity).
    pub dropped_frames: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a unit boundary: a start code is expected.
    Sync,
    /// Scanning for a start code.
    Resync,
    /// Skipping the rest of a unit that is not kept.
    Skip(usize),
    /// Inside a PES payload; `remaining` is `None` for PES_packet_length 0
    /// (ends at the next system start code).
    Body {
        video: bool,
        remaining: Option<usize>,
    },
}

/// What [`PsDemuxer`] makes of the bytes at a unit boundary.
enum Unit {
    /// Needs more bytes.
    Need,
    /// Consumed this many bytes; the state says what comes next.
    Consumed(usize),
    /// Not a unit: resynchronise.
    Lost,
    /// Impossible lengths: count and resynchronise.
    Absurd,
}

/// After a discontinuity: video PES are dropped until a frame visibly
/// starts (so a continuation PES of the damaged frame is not taken for one).
#[derive(Clone, Copy, Debug)]
struct Gate {
    /// PTS of the frame that was dropped, when known.
    dropped_pts: Option<u64>,
    /// A pack header was seen since.
    pack_seen: bool,
}

#[derive(Debug)]
struct Builder {
    stream_id: u8,
    data: Vec<u8>,
    pts: Option<u64>,
    dts: Option<u64>,
    rtp_ts: u32,
    oversized: bool,
    damaged: bool,
}

impl Builder {
    fn append(&mut self, data: &[u8], max: usize) {
        if self.oversized || data.is_empty() {
            return;
        }
        if self.data.len() + data.len() > max {
            self.oversized = true;
            self.data = Vec::new();
            return;
        }
        self.data.extend_from_slice(data);
    }
}

/// Demultiplexes the PS carried by one RTP stream into video access units
/// and audio frames.
///
/// Feed the RTP payloads in sequence order with [`PsDemuxer::push`] (use
/// [`crate::rtp::Reorder`] first on UDP) and call
/// [`PsDemuxer::discontinuity`] when packets were lost.
///
/// A video frame is made of consecutive video PES payloads and ends when:
/// the RTP marker bit is set, the RTP timestamp changes (devices with wrong
/// markers), or a video PES arrives whose PTS differs from the frame's, or
/// that has no PTS but follows a new pack header. A PES with the frame's own
/// PTS continues the frame even after a pack header (some encoders write a
/// pack per PES). When the marker or timestamp says the frame ended in the
/// middle of a video PES, the frame ends at the next video PES instead.
///
/// Garbage is skipped up to the next `00 00 01 BA/BB/BC/C0-EF`. A system
/// start code inside a video PES (impossible in an H.264/H.265/MPEG-4
/// elementary stream) means the PES was cut short; its frame is dropped.
/// Memory is bounded: frames above the maximum frame size are dropped, and
/// the input buffer never holds more than one PSM or header.
#[derive(Debug)]
pub struct PsDemuxer {
    max_frame_size: usize,
    buf: Vec<u8>,
    state: State,
    video: Option<Builder>,
    audio: Option<Builder>,
    /// A frame boundary (pack header, or marker/timestamp change in the
    /// middle of a video PES) was seen since the current video frame began.
    pending: bool,
    /// PSM stream_type per stream id; 0 = not known.
    stream_types: [u8; 256],
    guessed: Option<Codec>,
    gate: Option<Gate>,
    last_ts: Option<u32>,
    cur_ts: u32,
    size_hint: usize,
    stats: PsStats,
}

impl Default for PsDemuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl PsDemuxer {
    /// A demuxer with the default maximum frame size (8 MiB).
    pub fn new() -> Self {
        PsDemuxer {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            buf: Vec::new(),
            state: State::Sync,
            video: None,
            audio: None,
            pending: false,
            stream_types: [0; 256],
            guessed: None,
            gate: None,
            last_ts: None,
            cur_ts: 0,
            size_hint: 0,
            stats: PsStats::default(),
        }
    }

    /// Sets the largest frame kept; larger frames are dropped and counted,
    /// and a PES length above it is absurd.
    pub fn with_max_frame_size(mut self, max: usize) -> Self {
        self.max_frame_size = max.max(1);
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> PsStats {
        self.stats
    }

    /// Input bytes held back (a partial header or PSM).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds one RTP payload with its timestamp and marker bit; returns the
    /// frames it completed.
    pub fn push(&mut self, payload: &[u8], rtp_timestamp: u32, marker: bool) -> Vec<Frame> {
        let mut out = Vec::new();
        if self.last_ts.is_some_and(|t| t != rtp_timestamp) {
            self.rtp_boundary(&mut out);
        }
        self.last_ts = Some(rtp_timestamp);
        self.cur_ts = rtp_timestamp;
        if self.buf.is_empty() {
            let n = self.parse(payload, &mut out);
            self.buf.extend_from_slice(&payload[n..]);
        } else {
            let mut buf = std::mem::take(&mut self.buf);
            buf.extend_from_slice(payload);
            let n = self.parse(&buf, &mut out);
            buf.drain(..n);
            self.buf = buf;
        }
        if self.buf.len() > self.max_frame_size + BUFFER_SLACK {
            // The buffer holds at most a PSM (6 + 65535 bytes), so this only
            // happens with a maximum frame size below that; the bound is a
            // promise.
            self.stats.truncated += 1;
            self.stats.resyncs += 1;
            self.stats.bytes_skipped += self.buf.len() as u64;
            self.buf = Vec::new();
            self.state = State::Resync;
        }
        if marker {
            self.rtp_boundary(&mut out);
        }
        out
    }

    /// End of stream: emits the frame in progress (a frame whose last PES is
    /// incomplete is dropped) and resets the parser, keeping the PSM.
    pub fn flush(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut held = std::mem::take(&mut self.buf);
        match self.state {
            State::Body {
                video,
                remaining: None,
            } => {
                // An unbounded PES ends with the stream, held bytes included.
                let max = self.max_frame_size;
                let b = if video {
                    &mut self.video
                } else {
                    &mut self.audio
                };
                if let Some(b) = b {
                    b.append(&held, max);
                }
                held.clear();
                if !video {
                    self.finish_audio(&mut out);
                }
            }
            State::Body {
                video,
                remaining: Some(_),
            } => {
                self.stats.truncated += 1;
                if video {
                    if let Some(v) = &mut self.video {
                        v.damaged = true;
                    }
                } else {
                    self.audio = None;
                }
            }
            _ => {}
        }
        self.stats.bytes_skipped += held.len() as u64;
        self.state = State::Sync;
        self.finish_video(&mut out);
        self.audio = None;
        self.last_ts = None;
        self.pending = false;
        self.gate = None;
        out
    }

    /// Tells the demuxer that RTP packets were lost before the next push:
    /// the frames in progress are dropped (counted), the parser hunts for
    /// the next start code, and video PES packets are skipped until a new
    /// frame visibly starts: a PES with a PTS other than the dropped frame's,
    /// or a PES without PTS after a pack header.
    pub fn discontinuity(&mut self) {
        if let State::Body {
            remaining: Some(_), ..
        } = self.state
        {
            self.stats.truncated += 1;
        }
        let dropped_pts = match self.video.take() {
            Some(v) => {
                self.stats.dropped_frames += 1;
                v.pts
            }
            None => None,
        };
        self.gate = Some(Gate {
            dropped_pts,
            pack_seen: false,
        });
        self.audio = None;
        self.stats.bytes_skipped += self.buf.len() as u64;
        self.buf.clear();
        self.stats.resyncs += 1;
        self.state = State::Resync;
        self.pending = false;
    }

    /// The RTP stream says a frame ended here.
    fn rtp_boundary(&mut self, out: &mut Vec<Frame>) {
        if let State::Body { video: true, .. } = self.state {
            self.pending = true;
        } else {
            self.finish_video(out);
        }
    }

    /// Parses as much of `data` as possible; returns the bytes consumed.
    fn parse(&mut self, data: &[u8], out: &mut Vec<Frame>) -> usize {
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            match self.state {
                State::Skip(n) => {
                    let k = n.min(rest.len());
                    pos += k;
                    if k < n {
                        self.state = State::Skip(n - k);
                        return pos;
                    }
                    self.state = State::Sync;
                }
                State::Body { video, remaining } => {
                    let (k, done) = self.body(rest, video, remaining, out);
                    pos += k;
                    if !done {
                        return pos;
                    }
                }
                State::Resync => match find_resync(rest) {
                    Ok(i) => {
                        self.stats.bytes_skipped += i as u64;
                        pos += i;
                        self.state = State::Sync;
                    }
                    Err(skip) => {
                        self.stats.bytes_skipped += skip as u64;
                        return pos + skip;
                    }
                },
                State::Sync => {
                    if rest.is_empty() {
                        return pos;
                    }
                    match self.unit(rest, out) {
                        Unit::Need => return pos,
                        Unit::Consumed(n) => pos += n,
                        Unit::Absurd | Unit::Lost => {
                            // Drop the first byte of the bad unit and hunt.
                            self.stats.resyncs += 1;
                            self.stats.bytes_skipped += 1;
                            pos += 1;
                            self.state = State::Resync;
                        }
                    }
                }
            }
        }
    }

    /// A unit at a boundary: pack header, system header, PSM, PES.
    fn unit(&mut self, rest: &[u8], out: &mut Vec<Frame>) -> Unit {
        if rest.len() < 4 {
            let prefix = rest.iter().zip([0u8, 0, 1]).all(|(a, b)| *a == b);
            return if prefix { Unit::Need } else { Unit::Lost };
        }
        if rest[..3] != [0, 0, 1] {
            return Unit::Lost;
        }
        let id = rest[3];
        let r = match id {
            0xBA => self.pack_header(rest),
            0xB9 => Unit::Consumed(4),
            0xBC => self.psm(rest),
            0xC0..=0xEF => self.pes(rest, out),
            0xBB | 0xBD..=0xBF | 0xF0..=0xFF => match rest.get(4..6) {
                None => Unit::Need,
                Some(l) => {
                    if id != 0xBB {
                        self.stats.pes += 1;
                    }
                    self.state = State::Skip(u16::from_be_bytes([l[0], l[1]]) as usize);
                    Unit::Consumed(6)
                }
            },
            _ => Unit::Lost,
        };
        if matches!(r, Unit::Absurd) {
            self.stats.absurd_lengths += 1;
        }
        r
    }

    fn pack_header(&mut self, rest: &[u8]) -> Unit {
        let Some(&b4) = rest.get(4) else {
            return Unit::Need;
        };
        let skip = if b4 >> 6 == 1 {
            // MPEG-2: 14 bytes plus pack_stuffing_length.
            let Some(&b13) = rest.get(13) else {
                return Unit::Need;
            };
            10 + (b13 & 7) as usize
        } else if b4 >> 4 == 2 {
            // MPEG-1: 12 bytes.
            8
        } else {
            return Unit::Lost;
        };
        self.stats.packs += 1;
        self.pending = true;
        if let Some(g) = &mut self.gate {
            g.pack_seen = true;
        }
        self.state = State::Skip(skip);
        Unit::Consumed(4)
    }

    fn psm(&mut self, rest: &[u8]) -> Unit {
        let be16 = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]) as usize;
        if rest.len() < 6 {
            return Unit::Need;
        }
        let claimed = 6 + be16(4);
        if claimed < 12 {
            return Unit::Absurd;
        }
        if rest.len() < 10 {
            return Unit::Need;
        }
        let esml_at = 10 + be16(8);
        if esml_at + 2 > claimed {
            return Unit::Absurd;
        }
        if rest.len() < esml_at + 2 {
            return Unit::Need;
        }
        let es_start = esml_at + 2;
        let es_end = es_start + be16(esml_at);
        if es_end > claimed {
            return Unit::Absurd;
        }
        // Up to the CRC; trailing bytes a device claims are resynced over.
        let total = claimed.min(es_end + 4);
        if rest.len() < total {
            return Unit::Need;
        }
        let mut entries = [(0u8, 0u8); 32];
        let mut n = 0;
        let mut off = es_start;
        while off + 4 <= es_end {
            let next = off + 4 + be16(off + 2);
            if next > es_end {
                return Unit::Absurd;
            }
            if n < entries.len() {
                entries[n] = (rest[off + 1], rest[off]);
                n += 1;
            }
            off = next;
        }
        for &(id, st) in &entries[..n] {
            self.stream_types[id as usize] = st;
        }
        Unit::Consumed(total)
    }

    fn pes(&mut self, rest: &[u8], out: &mut Vec<Frame>) -> Unit {
        if rest.len() < 6 {
            return Unit::Need;
        }
        let len = u16::from_be_bytes([rest[4], rest[5]]) as usize;
        if len > self.max_frame_size {
            return Unit::Absurd;
        }
        let (hlen, pts, dts) = match pes_header(rest, len) {
            Header::Need => return Unit::Need,
            Header::Absurd => return Unit::Absurd,
            Header::Ok(h, p, d) => (h, p, d),
        };
        self.stats.pes += 1;
        let id = rest[3];
        let video = id >= 0xE0;
        if video {
            self.start_video(id, pts, dts, out);
        } else {
            // An audio PES is a frame of its own.
            self.audio = Some(Builder {
                stream_id: id,
                data: Vec::with_capacity(len.saturating_sub(hlen - 6)),
                pts,
                dts,
                rtp_ts: self.cur_ts,
                oversized: false,
                damaged: false,
            });
        }
        let remaining = (len != 0).then(|| len + 6 - hlen);
        self.state = State::Body { video, remaining };
        Unit::Consumed(hlen)
    }

    fn start_video(&mut self, id: u8, pts: Option<u64>, dts: Option<u64>, out: &mut Vec<Frame>) {
        if let Some(g) = self.gate {
            let starts = match pts {
                Some(p) => g.dropped_pts != Some(p),
                None => g.pack_seen,
            };
            if !starts {
                // Part of the damaged frame: the body goes nowhere.
                return;
            }
            self.gate = None;
        }
        let new_frame = match &self.video {
            None => true,
            Some(v) => {
                v.stream_id != id
                    || match pts {
                        Some(p) => v.pts != Some(p),
                        None => self.pending,
                    }
            }
        };
        if new_frame {
            self.finish_video(out);
            self.video = Some(Builder {
                stream_id: id,
                data: Vec::with_capacity(self.size_hint.min(self.max_frame_size)),
                pts,
                dts,
                rtp_ts: self.cur_ts,
                oversized: false,
                damaged: false,
            });
        }
        self.pending = false;
    }

    /// Consumes PES payload bytes; returns (consumed, PES finished).
    fn body(
        &mut self,
        rest: &[u8],
        video: bool,
        remaining: Option<usize>,
        out: &mut Vec<Frame>,
    ) -> (usize, bool) {
        let max = self.max_frame_size;
        match remaining {
            Some(r) if !video => {
                let k = r.min(rest.len());
                if let Some(a) = &mut self.audio {
                    a.append(&rest[..k], max);
                }
                if k == r {
                    self.state = State::Sync;
                    self.finish_audio(out);
                    (k, true)
                } else {
                    self.state = State::Body {
                        video,
                        remaining: Some(r - k),
                    };
                    (k, false)
                }
            }
            Some(r) => {
                let take = r.min(rest.len());
                let (k, code) = scan_payload(&rest[..take], take == r);
                match &mut self.video {
                    Some(v) => v.append(&rest[..k], max),
                    None => self.stats.bytes_skipped += k as u64,
                }
                if code {
                    // A system start code inside the payload: the PES was
                    // cut short (lost packets); its frame is damaged.
                    self.stats.truncated += 1;
                    if let Some(v) = &mut self.video {
                        v.damaged = true;
                    }
                    self.state = State::Sync;
                    (k, true)
                } else if k == r {
                    self.state = State::Sync;
                    (k, true)
                } else {
                    self.state = State::Body {
                        video,
                        remaining: Some(r - k),
                    };
                    (k, false)
                }
            }
            None => {
                let (k, code) = scan_payload(rest, false);
                let b = if video {
                    &mut self.video
                } else {
                    &mut self.audio
                };
                match b {
                    Some(b) => b.append(&rest[..k], max),
                    None => self.stats.bytes_skipped += k as u64,
                }
                if code {
                    self.state = State::Sync;
                    if !video {
                        self.finish_audio(out);
                    }
                }
                (k, code)
            }
        }
    }

    fn finish_audio(&mut self, out: &mut Vec<Frame>) {
        let Some(b) = self.audio.take() else { return };
        if b.oversized {
            self.stats.dropped_frames += 1;
            return;
        }
        if b.data.is_empty() {
            return;
        }
        let codec = match self.stream_types[b.stream_id as usize] {
            0 if b.data.len() >= 2 && b.data[0] == 0xFF && b.data[1] & 0xF6 == 0xF0 => Codec::Aac,
            t => Codec::from_stream_type(t),
        };
        self.stats.frames += 1;
        out.push(Frame {
            kind: FrameKind::Audio,
            codec,
            pts: b.pts,
            dts: b.dts,
            rtp_timestamp: b.rtp_ts,
            keyframe: true,
            data: b.data,
        });
    }

    fn finish_video(&mut self, out: &mut Vec<Frame>) {
        self.pending = false;
        let Some(b) = self.video.take() else { return };
        if b.damaged || b.oversized {
            self.stats.dropped_frames += 1;
            return;
        }
        if b.data.is_empty() {
            return;
        }
        let codec = match self.stream_types[b.stream_id as usize] {
            0 => {
                if let Some(g) = h26x::guess_codec(&b.data) {
                    self.guessed = Some(g);
                }
                self.guessed.unwrap_or(Codec::Unknown(0))
            }
            t => Codec::from_stream_type(t),
        };
        self.size_hint = b.data.len();
        self.stats.frames += 1;
        out.push(Frame {
            kind: FrameKind::Video,
            codec,
            pts: b.pts,
            dts: b.dts,
            rtp_timestamp: b.rtp_ts,
            keyframe: h26x::is_keyframe(codec, &b.data),
            data: b.data,
        });
    }
}

enum Header {
    Need,
    Absurd,
    /// Header length from the start code on, PTS, DTS.
    Ok(usize, Option<u64>, Option<u64>),
}

/// Parses the header of a PES packet (MPEG-2 or MPEG-1 syntax) whose
/// PES_packet_length is `len` (0 = unbounded).
fn pes_header(p: &[u8], len: usize) -> Header {
    let limit = if len == 0 { usize::MAX } else { 6 + len };
    let Some(&b6) = p.get(6) else {
        return if limit <= 6 {
            Header::Absurd
        } else {
            Header::Need
        };
    };
    if b6 & 0xC0 == 0x80 {
        // MPEG-2: flags, PES_header_data_length, optional fields.
        if limit < 9 {
            return Header::Absurd;
        }
        let (Some(&flags), Some(&hdl)) = (p.get(7), p.get(8)) else {
            return Header::Need;
        };
        let hlen = 9 + hdl as usize;
        if hlen > limit {
            return Header::Absurd;
        }
        if p.len() < hlen {
            return Header::Need;
        }
        let (pts, dts) = match flags >> 6 {
            2 if hdl >= 5 => (Some(read_ts(&p[9..])), None),
            3 if hdl >= 10 => (Some(read_ts(&p[9..])), Some(read_ts(&p[14..]))),
            2 | 3 => return Header::Absurd,
            _ => (None, None),
        };
        return Header::Ok(hlen, pts, dts);
    }
    // MPEG-1: stuffing, optional STD buffer size, time stamps.
    let mut i = 6;
    loop {
        if i >= limit || i > 6 + 16 {
            return Header::Absurd;
        }
        match p.get(i) {
            None => return Header::Need,
            Some(0xFF) => i += 1,
            Some(_) => break,
        }
    }
    if p[i] & 0xC0 == 0x40 {
        i += 2;
    }
    let Some(&b) = p.get(i) else {
        return if i >= limit {
            Header::Absurd
        } else {
            Header::Need
        };
    };
    let n = match b >> 4 {
        2 => 5,
        3 => 10,
        _ if b == 0x0F => 1,
        _ => return Header::Absurd,
    };
    let hlen = i + n;
    if hlen > limit {
        return Header::Absurd;
    }
    if p.len() < hlen {
        return Header::Need;
    }
    match n {
        5 => Header::Ok(hlen, Some(read_ts(&p[i..])), None),
        10 => Header::Ok(hlen, Some(read_ts(&p[i..])), Some(read_ts(&p[i + 5..]))),
        _ => Header::Ok(hlen, None, None),
    }
}

/// A 33-bit time stamp from its 5-byte PES encoding (marker bits ignored).
fn read_ts(b: &[u8]) -> u64 {
    (((b[0] as u64 >> 1) & 7) << 30)
        | ((b[1] as u64) << 22)
        | ((b[2] as u64 >> 1) << 15)
        | ((b[3] as u64) << 7)
        | (b[4] as u64 >> 1)
}

fn is_resync_id(id: u8) -> bool {
    matches!(id, 0xBA | 0xBB | 0xBC | 0xC0..=0xEF)
}

/// Looks for a start code to resynchronise at: `Ok(offset)`, or `Err(n)`
/// when none is found and the first `n` bytes can be thrown away.
fn find_resync(data: &[u8]) -> Result<usize, usize> {
    let mut from = 0;
    while let Some(i) = find_start_code(&data[from..]) {
        let at = from + i;
        match data.get(at + 3) {
            None => return Err(at),
            Some(&id) if is_resync_id(id) => return Ok(at),
            Some(_) => from = at + 1,
        }
    }
    Err(data.len() - trailing_prefix(data))
}

/// How many trailing bytes of `data` could start a start code (0, 1 or 2
/// zero bytes).
fn trailing_prefix(data: &[u8]) -> usize {
    match data {
        [.., 0, 0] => 2,
        [.., 0] => 1,
        _ => 0,
    }
}

/// Scans video (or unbounded) PES payload for a system start code
/// (`00 00 01` then 0xB9 or above, which no video elementary stream
/// contains). Returns how many bytes belong to the payload, and whether a
/// system start code follows them. When `final_part` is false, a partial
/// start code at the end is held back.
fn scan_payload(chunk: &[u8], final_part: bool) -> (usize, bool) {
    let mut from = 0;
    while let Some(i) = find_start_code(&chunk[from..]) {
        let at = from + i;
        match chunk.get(at + 3) {
            Some(&id) if id >= 0xB9 => return (at, true),
            Some(_) => from = at + 1,
            None if final_part => return (chunk.len(), false),
            None => return (at, false),
        }
    }
    if final_part {
        (chunk.len(), false)
    } else {
        (chunk.len() - trailing_prefix(chunk), false)
    }
}

/// Writes GB28181-style program stream: one pack per frame, with system
/// header and PSM before key frames.
#[derive(Clone, Debug)]
pub struct PsMuxer {
    video: Codec,
    audio: Option<Codec>,
}

impl PsMuxer {
    /// A muxer for one video stream (stream id 0xE0) of this codec.
    pub fn new(video: Codec) -> Self {
        PsMuxer { video, audio: None }
    }

    /// Adds an audio stream (stream id 0xC0) to the system header and PSM.
    pub fn with_audio(mut self, audio: Codec) -> Self {
        self.audio = Some(audio);
        self
    }

    /// Appends one Annex-B access unit as a pack: pack header, then system
    /// header and PSM when it is a key frame, then PES packets of at most
    /// [`MAX_PES_PAYLOAD`] bytes; the first carries the PTS (and DTS when
    /// given). Time stamps are 90 kHz. Empty units write nothing.
    pub fn write_video(&mut self, au: &[u8], pts: u64, dts: Option<u64>, out: &mut Vec<u8>) {
        if au.is_empty() {
            return;
        }
        write_pack_header(dts.unwrap_or(pts), out);
        if h26x::is_keyframe(self.video, au) {
            self.write_system_header(out);
            self.write_psm(out);
        }
        write_pes_packets(0xE0, au, pts, dts, out);
    }

    /// Appends one audio frame as a pack with its PES packet(s).
    pub fn write_audio(&mut self, data: &[u8], pts: u64, out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        write_pack_header(pts, out);
        write_pes_packets(0xC0, data, pts, None, out);
    }

    fn write_system_header(&self, out: &mut Vec<u8>) {
        let n = 1 + self.audio.is_some() as usize;
        out.extend_from_slice(&[0, 0, 1, 0xBB]);
        out.extend_from_slice(&((6 + 3 * n) as u16).to_be_bytes());
        let rate_bound: u32 = 50_000;
        out.extend_from_slice(&[
            0x80 | (rate_bound >> 15) as u8,
            (rate_bound >> 7) as u8,
            ((rate_bound << 1) as u8) | 1,
            // audio_bound, fixed_flag 0, CSPS_flag 0
            (self.audio.is_some() as u8) << 2,
            // system_audio_lock, system_video_lock, marker, video_bound 1
            0xE1,
            // packet_rate_restriction_flag 0, reserved
            0x7F,
        ]);
        // P-STD buffer bounds: video 1024 x 400 bytes, audio 128 x 32.
        const VIDEO_BOUND: u16 = 400;
        out.extend_from_slice(&[0xE0, 0xE0 | (VIDEO_BOUND >> 8) as u8, VIDEO_BOUND as u8]);
        if self.audio.is_some() {
            out.extend_from_slice(&[0xC0, 0xC0, 32]);
        }
    }

    fn write_psm(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let mut entries = vec![(self.video.stream_type(), 0xE0u8)];
        if let Some(a) = self.audio {
            entries.push((a.stream_type(), 0xC0));
        }
        out.extend_from_slice(&[0, 0, 1, 0xBC]);
        out.extend_from_slice(&((10 + 4 * entries.len()) as u16).to_be_bytes());
        // current_next_indicator 1, reserved, version 0; reserved, marker.
        out.extend_from_slice(&[0xE0, 0xFF, 0, 0]);
        out.extend_from_slice(&((4 * entries.len()) as u16).to_be_bytes());
        for (st, id) in entries {
            out.extend_from_slice(&[st, id, 0, 0]);
        }
        let crc = crc32_mpeg2(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
}

/// MPEG-2 pack header with this SCR (90 kHz), mux rate 6106 x 50 B/s, no
/// stuffing.
fn write_pack_header(scr: u64, out: &mut Vec<u8>) {
    let s = scr & ((1 << 33) - 1);
    let mux_rate: u32 = 6106;
    out.extend_from_slice(&[
        0,
        0,
        1,
        0xBA,
        0x44 | ((s >> 27) as u8 & 0x38) | ((s >> 28) as u8 & 0x03),
        (s >> 20) as u8,
        0x04 | ((s >> 12) as u8 & 0xF8) | ((s >> 13) as u8 & 0x03),
        (s >> 5) as u8,
        0x04 | ((s << 3) as u8 & 0xF8),
        0x01,
        (mux_rate >> 14) as u8,
        (mux_rate >> 6) as u8,
        ((mux_rate << 2) as u8) | 0x03,
        0xF8,
    ]);
}

fn write_pes_packets(id: u8, data: &[u8], pts: u64, dts: Option<u64>, out: &mut Vec<u8>) {
    for (i, chunk) in data.chunks(MAX_PES_PAYLOAD).enumerate() {
        if i == 0 {
            write_pes(id, chunk, Some(pts), dts, out);
        } else {
            write_pes(id, chunk, None, None, out);
        }
    }
}

/// One PES packet (MPEG-2 syntax); the payload must fit the 16-bit length.
fn write_pes(id: u8, payload: &[u8], pts: Option<u64>, dts: Option<u64>, out: &mut Vec<u8>) {
    let (flags, hdl) = match (pts, dts) {
        (Some(_), Some(_)) => (0xC0, 10),
        (Some(_), None) => (0x80, 5),
        _ => (0x00, 0),
    };
    let len = 3 + hdl + payload.len();
    debug_assert!(len <= 0xFFFF);
    out.extend_from_slice(&[0, 0, 1, id]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[0x80, flags, hdl as u8]);
    if let Some(p) = pts {
        write_ts(if dts.is_some() { 3 } else { 2 }, p, out);
    }
    if let Some(d) = dts {
        write_ts(1, d, out);
    }
    out.extend_from_slice(payload);
}

fn write_ts(prefix: u8, t: u64, out: &mut Vec<u8>) {
    let t = t & ((1 << 33) - 1);
    out.extend_from_slice(&[
        (prefix << 4) | ((t >> 29) as u8 & 0x0E) | 1,
        (t >> 22) as u8,
        ((t >> 14) as u8 & 0xFE) | 1,
        (t >> 7) as u8,
        ((t << 1) as u8) | 1,
    ]);
}

/// CRC-32/MPEG-2 (polynomial 0x04C11DB7, initial all ones, not reflected).
fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Cuts a PS byte stream into RTP payloads of at most `max_payload` bytes
/// (GB28181 devices use about 1388), regardless of PS boundaries.
pub fn packetize_rtp(ps: &[u8], max_payload: usize) -> std::slice::Chunks<'_, u8> {
    ps.chunks(max_payload.max(1))
}

#[cfg(test)]
mod tests;
