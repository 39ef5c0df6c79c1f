//! The synchronous part of a stream: one packet in (decrypt, account,
//! reorder, demux or depacketize, decrypt NAL units), frames out to the
//! recorder and the forwards. Unit-tested in `stream::tests`.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex,
};

use media::{
    h26x::Depacketizer,
    ps::PsDemuxer,
    rtp::{self, Released, Reorder, SeqStats},
    Frame, FrameKind,
};
use tracing::{info, warn};

use super::crypto::StreamCrypto;
use crate::{keys::KeyView, sys::clock::wall_ms};
use media::ps::PsMuxer;

use super::*;

/// Receive-side processing of one stream, independent of the socket.
pub struct Pipeline {
    pub(super) expected_ssrc: Option<u32>,
    pub(super) seq: Option<SeqStats>,
    pub(super) reorder: Reorder<Vec<u8>>,
    pub(super) released: Vec<Released<Vec<u8>>>,
    pub(super) ps: PsDemuxer,
    pub(super) raw: Option<Depacketizer>,
    /// The payload kind was configured, not guessed.
    pub(super) forced: bool,
    pub(super) forwards: Vec<Forward>,
    pub(super) fwd_buf: Vec<u8>,
    pub recorder: Option<Recorder>,
    pub stats: MediaStats,
    /// Reasons already logged (once per stream, not per packet).
    pub(super) logged: u32,
    pub(super) id: String,
    pub(super) crypto: StreamCrypto,
    pub(super) clear_buf: Vec<u8>,
    /// Per-packet outcomes of the last SRTP batch (reused).
    pub(super) batch_results: Vec<Result<std::ops::Range<usize>, gb35114::Failure>>,
    /// PS muxer for forwarding decrypted frames (sm4-nal-ofb streams).
    pub(super) remux: Option<PsMuxer>,
    pub(super) remux_buf: Vec<u8>,
    /// Legs added and removed while the stream runs.
    pub(super) legs: Legs,
    /// Consecutive UDP packets from the current source.
    pub(super) source_run: u32,
}

/// Forwarding legs to add or remove while a stream runs (cascade relays):
/// the control side queues them, the receiver applies them at its next
/// tick (every 100 ms).
#[derive(Clone, Default)]
pub struct Legs(
    std::sync::Arc<Mutex<LegChanges>>,
    std::sync::Arc<AtomicBool>,
);

#[derive(Default)]
pub(super) struct LegChanges {
    add: Vec<Forward>,
    remove: Vec<String>,
    /// Legs removed for good: one that arrives later (a TCP leg whose
    /// connection completed after its dialog ended) is not added.
    gone: std::collections::VecDeque<String>,
    /// Each UDP relay leg's state shared with the control side.
    shared: std::collections::HashMap<String, std::sync::Arc<super::forward::LegShared>>,
}

impl Legs {
    /// A running UDP leg's state shared with the control side.
    pub fn shared(&self, id: &str) -> Option<std::sync::Arc<super::forward::LegShared>> {
        self.0.lock().ok()?.shared.get(id).cloned()
    }

    pub fn add(&self, f: Forward) {
        if let Ok(mut c) = self.0.lock() {
            let id = f.stats.leg.as_deref().unwrap_or("").to_string();
            if !c.gone.iter().any(|g| *g == id) {
                if let Some(sh) = f.shared() {
                    c.shared.insert(id, sh);
                }
                c.add.push(f);
                self.1.store(true, Ordering::Release);
            }
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut c) = self.0.lock() {
            c.add.retain(|f| f.stats.leg.as_deref() != Some(id));
            c.shared.remove(id);
            c.remove.push(id.to_string());
            c.gone.push_back(id.to_string());
            if c.gone.len() > 64 {
                c.gone.pop_front();
            }
            self.1.store(true, Ordering::Release);
        }
    }
}

/// Packets in a row from one source that confirm it.
pub const SOURCE_CONFIRM: u32 = 25;

pub(super) const LOG_GARBAGE: u32 = 1;
pub(super) const LOG_SSRC: u32 = 2;
pub(super) const LOG_IO: u32 = 4;
pub(super) const LOG_PS: u32 = 8;
pub(super) const LOG_DECRYPT: u32 = 16;

impl Pipeline {
    /// The payload is fixed instead of guessed from the payload type:
    /// "ps", "h264" (RFC 6184) or "h265" (RFC 7798).
    pub fn with_payload(mut self, payload: &str) -> Pipeline {
        self.forced = true;
        self.raw = match payload {
            "h264" => Some(Depacketizer::h264()),
            "h265" => Some(Depacketizer::h265()),
            _ => None,
        };
        self
    }

    /// Forwarding sinks.
    pub fn with_forwards(mut self, f: Vec<Forward>) -> Pipeline {
        self.forwards = f;
        self
    }

    /// Decryption keys of the stream's channel; `srtp`: the packets are
    /// srtp-sm4. (Without keys, encrypted units are still recognised,
    /// counted as "no_key" and dropped.)
    pub fn with_keys(mut self, keys: Option<KeyView>, srtp: bool) -> Pipeline {
        self.crypto = StreamCrypto::new(keys, srtp);
        self
    }

    pub fn new(id: &str, expected_ssrc: Option<u32>, recorder: Option<Recorder>) -> Pipeline {
        Pipeline {
            expected_ssrc,
            seq: None,
            reorder: Reorder::new(32, 100_000_000),
            released: Vec::new(),
            ps: PsDemuxer::new(),
            raw: None,
            forced: false,
            forwards: Vec::new(),
            fwd_buf: Vec::with_capacity(1500),
            recorder,
            stats: MediaStats::default(),
            logged: 0,
            id: id.to_string(),
            crypto: StreamCrypto::new(None, false),
            clear_buf: Vec::with_capacity(1500),
            batch_results: Vec::with_capacity(16),
            remux: None,
            remux_buf: Vec::new(),
            legs: Legs::default(),
            source_run: 0,
        }
    }

    /// The handle that adds and removes legs while the stream runs.
    pub fn legs(&self) -> Legs {
        self.legs.clone()
    }

    fn apply_legs(&mut self) {
        // One relaxed-cost load per packet; the lock only when a change waits.
        if !self.legs.1.swap(false, Ordering::Acquire) {
            return;
        }
        let Ok(mut c) = self.legs.0.try_lock() else {
            self.legs.1.store(true, Ordering::Release);
            return;
        };
        if c.add.is_empty() && c.remove.is_empty() {
            return;
        }
        let removed = std::mem::take(&mut c.remove);
        self.forwards
            .retain(|f| f.stats.leg.as_ref().is_none_or(|l| !removed.contains(l)));
        for mut f in c.add.drain(..) {
            if self.remux.is_some() {
                f.stats.mode = "remux";
            }
            info!(stream = %self.id, leg = f.stats.leg.as_deref().unwrap_or(""), dest = %f.dest, "relay leg added (starts at the next key frame)");
            self.forwards.push(f);
        }
        if self.forwards.is_empty() {
            self.stats.forwards.clear();
        }
    }

    pub(super) fn once(&mut self, what: u32) -> bool {
        let first = self.logged & what == 0;
        self.logged |= what;
        first
    }

    /// The source address of the next UDP packet: a source that sent
    /// `SOURCE_CONFIRM` packets in a row is confirmed (the kernel relay
    /// takes only its packets).
    pub fn source(&mut self, src: Option<std::net::SocketAddr>) {
        let Some(src) = src else { return };
        if self.stats.source == Some(src) {
            self.source_run = self.source_run.saturating_add(1);
        } else {
            self.stats.source = Some(src);
            self.source_run = 1;
        }
        self.stats.source_confirmed = self.source_run >= SOURCE_CONFIRM;
    }

    /// One RTP (or SRTP) packet as received, at `now_ns` (monotonic).
    pub fn packet(&mut self, buf: &[u8], now_ns: u64) {
        self.apply_legs();
        if !self.crypto.srtp() || rtp::parse(buf).is_err() {
            return self.packet_clear(buf, now_ns);
        }
        let mut clear = std::mem::take(&mut self.clear_buf);
        match self.crypto.unprotect(buf, &mut clear) {
            Ok(()) => self.packet_clear(&clear, now_ns),
            Err(f) => {
                if self.once(LOG_DECRYPT) {
                    warn!(stream = %self.id, reason = f.as_str(), "SRTP packet not decrypted (counted; logged once)");
                }
            }
        }
        self.clear_buf = clear;
    }

    /// One receive batch, in order: each packet's source address and
    /// bytes. SRTP packets go through the batch path (their tags computed
    /// together); everything else as [`Pipeline::packet`] does.
    pub fn packets(&mut self, batch: &[(Option<std::net::SocketAddr>, &[u8])], now_ns: u64) {
        if !self.crypto.srtp() || batch.len() < 2 {
            for (src, d) in batch {
                self.source(*src);
                self.packet(d, now_ns);
            }
            return;
        }
        self.apply_legs();
        let is_rtp: Vec<bool> = batch.iter().map(|(_, d)| rtp::parse(d).is_ok()).collect();
        let srtp: Vec<&[u8]> = batch
            .iter()
            .zip(&is_rtp)
            .filter(|(_, ok)| **ok)
            .map(|((_, d), _)| *d)
            .collect();
        let mut clear = std::mem::take(&mut self.clear_buf);
        let mut results = std::mem::take(&mut self.batch_results);
        self.crypto.unprotect_batch(&srtp, &mut clear, &mut results);
        let mut next = results.iter();
        for ((src, d), ok) in batch.iter().zip(is_rtp) {
            self.source(*src);
            if !ok {
                self.packet_clear(d, now_ns);
                continue;
            }
            match next.next() {
                Some(Ok(r)) => {
                    let r = r.clone();
                    if let Some(c) = clear.get(r) {
                        self.packet_clear(c, now_ns);
                    }
                }
                Some(Err(f)) if self.once(LOG_DECRYPT) => {
                    warn!(stream = %self.id, reason = f.as_str(), "SRTP packet not decrypted (counted; logged once)");
                }
                Some(Err(_)) | None => {}
            }
        }
        self.clear_buf = clear;
        self.batch_results = results;
    }

    pub(super) fn packet_clear(&mut self, buf: &[u8], now_ns: u64) {
        let p = match rtp::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                self.stats.garbage += 1;
                if self.once(LOG_GARBAGE) {
                    warn!(stream = %self.id, error = %e, len = buf.len(), "non-RTP data on the media port (logged once)");
                }
                return;
            }
        };
        if self.stats.ssrc.is_none() {
            self.stats.ssrc = Some(p.ssrc);
        }
        if self.expected_ssrc.is_some_and(|e| e != p.ssrc) {
            self.stats.ssrc_mismatches += 1;
            if self.once(LOG_SSRC) {
                warn!(stream = %self.id, expected = ?self.expected_ssrc, got = p.ssrc, "media under another SSRC; taken by port (logged once)");
            }
        }
        let seq = self.seq.get_or_insert_with(|| SeqStats::new(90_000));
        seq.record(p.sequence, p.timestamp, buf.len(), now_ns);
        self.stats.packets = seq.packets();
        self.stats.bytes = seq.bytes();
        self.stats.lost = seq.lost();
        self.stats.out_of_order = seq.out_of_order();
        self.stats.duplicates = seq.duplicates();
        self.stats.jitter_ms = seq.jitter() / 90.0;
        self.stats.last_packet_ms = Some(wall_ms());
        // Raw H.264/H.265 (RFC 6184/7798) instead of PS: PT 98 H.264,
        // 99/100 H.265 (GB practice; PS is 96).
        if !self.forced && self.raw.is_none() && matches!(p.payload_type, 98..=100) {
            self.raw = Some(if p.payload_type == 98 {
                Depacketizer::h264()
            } else {
                Depacketizer::h265()
            });
        }
        let item = {
            let mut v = Vec::with_capacity(p.payload.len() + 8);
            v.extend_from_slice(&p.timestamp.to_be_bytes());
            v.push(p.marker as u8 | (p.payload_type << 1));
            v.extend_from_slice(p.payload);
            v
        };
        let mut released = std::mem::take(&mut self.released);
        self.reorder.push(p.sequence, item, now_ns, &mut released);
        self.consume(&mut released);
        self.released = released;
    }

    /// A datagram too long for the receive buffer (dropped, counted as
    /// garbage).
    pub fn oversized(&mut self) {
        self.stats.garbage += 1;
        if self.once(LOG_GARBAGE) {
            warn!(stream = %self.id, "oversized datagram on the media port dropped (logged once)");
        }
    }

    /// Releases what the reorder buffer held too long (call periodically).
    pub fn tick(&mut self, now_ns: u64) {
        self.apply_legs();
        let mut released = std::mem::take(&mut self.released);
        self.reorder.poll(now_ns, &mut released);
        self.consume(&mut released);
        self.released = released;
    }

    pub(super) fn consume(&mut self, released: &mut Vec<Released<Vec<u8>>>) {
        for r in released.drain(..) {
            match r {
                Released::Gap { .. } => {
                    if self.raw.is_none() {
                        self.ps.discontinuity();
                    }
                }
                Released::Packet { seq, item } => {
                    if item.len() < 5 {
                        continue;
                    }
                    let ts = u32::from_be_bytes([item[0], item[1], item[2], item[3]]);
                    let marker = item[4] & 1 != 0;
                    let pt = item[4] >> 1;
                    let payload = &item[5..];
                    // Encrypted access units are passed on re-muxed from
                    // the clear frames (clear_frames), not as received.
                    let relay = !self.crypto.nal_encrypted();
                    if relay {
                        for f in &mut self.forwards {
                            f.send(pt, ts, marker, payload, &mut self.fwd_buf, Some(seq));
                        }
                    }
                    let frames = match &mut self.raw {
                        Some(d) => d.push(payload, seq, ts, marker),
                        None => {
                            if let (Some(r), true) = (&mut self.recorder, relay) {
                                if let Err(e) = r.ps(payload) {
                                    self.stats.dropped_frames += 1;
                                    if self.logged & LOG_IO == 0 {
                                        self.logged |= LOG_IO;
                                        warn!(stream = %self.id, error = %e, "recording failed (logged once)");
                                    }
                                }
                            }
                            self.ps.push(payload, ts, marker)
                        }
                    };
                    self.frames(frames);
                }
            }
        }
        let ps = self.ps.stats();
        if ps.resyncs > self.stats.ps_resyncs && self.once(LOG_PS) {
            warn!(stream = %self.id, "PS stream needed resynchronisation (damaged or garbage; logged once)");
        }
        self.stats.ps_resyncs = ps.resyncs;
        self.stats.dropped_frames = self
            .stats
            .dropped_frames
            .max(ps.dropped_frames + self.raw.as_ref().map_or(0, |d| d.stats().dropped_frames));
    }

    pub(super) fn frames(&mut self, frames: Vec<Frame>) {
        let mut clear = Vec::with_capacity(frames.len());
        for f in frames {
            self.crypto.frame(f, &mut clear);
        }
        self.clear_frames(clear);
    }

    pub(super) fn clear_frames(&mut self, frames: Vec<Frame>) {
        if self.remux.is_none() && self.crypto.nal_encrypted() {
            // The payloads are encrypted access units: forward (and record
            // as PS) what is muxed from the decrypted frames from now on.
            if let Some(f) = frames.iter().find(|f| f.kind == FrameKind::Video) {
                info!(stream = %self.id, "encrypted media: forwarding and PS recording use re-muxed clear frames");
                self.remux = Some(PsMuxer::new(f.codec));
                for fw in &mut self.forwards {
                    fw.stats.mode = "remux";
                }
            }
        }
        for f in frames {
            if let (Some(mux), FrameKind::Video) = (&mut self.remux, f.kind) {
                self.remux_buf.clear();
                let pts = f.pts.unwrap_or(f.rtp_timestamp as u64);
                mux.write_video(&f.data, pts, f.dts, &mut self.remux_buf);
                let chunks: Vec<&[u8]> = media::ps::packetize_rtp(&self.remux_buf, 1400).collect();
                for fw in &mut self.forwards {
                    for (i, c) in chunks.iter().enumerate() {
                        fw.send(
                            96,
                            f.rtp_timestamp,
                            i + 1 == chunks.len(),
                            c,
                            &mut self.fwd_buf,
                            None,
                        );
                    }
                }
                if let Some(r) = &mut self.recorder {
                    if let Err(e) = r.ps(&self.remux_buf) {
                        if self.logged & LOG_IO == 0 {
                            self.logged |= LOG_IO;
                            warn!(stream = %self.id, error = %e, "recording failed (logged once)");
                        }
                    }
                }
            }
            if f.kind == FrameKind::Video {
                self.stats.frames += 1;
                if f.keyframe {
                    self.stats.keyframes += 1;
                }
                if self.stats.codec.is_none() {
                    self.stats.codec = Some(codec_name(f.codec).into());
                }
            }
            if let Some(r) = &mut self.recorder {
                if let Err(e) = r.frame(&f) {
                    if self.once(LOG_IO) {
                        warn!(stream = %self.id, error = %e, "recording failed (logged once)");
                    }
                }
            }
        }
    }

    /// End of the stream: flush everything.
    pub fn finish(&mut self) {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.flush(&mut released);
        self.consume(&mut released);
        let tail = match &mut self.raw {
            Some(d) => d.flush(),
            None => self.ps.flush(),
        };
        self.frames(tail);
        let mut held = Vec::new();
        self.crypto.finish(&mut held);
        self.clear_frames(held);
        if let Some(r) = &mut self.recorder {
            if let Err(e) = r.close() {
                warn!(stream = %self.id, error = %e, "closing the recording failed");
            }
            self.stats.files = r.files.clone();
        }
        self.stats.decrypt = self.crypto.stats();
    }

    pub(super) fn publish(&mut self, shared: &Mutex<MediaStats>) {
        self.stats.decrypt = self.crypto.stats();
        if !self.forwards.is_empty() {
            self.stats.forwards = self.forwards.iter().map(|f| f.stats.clone()).collect();
        }
        if let Some(r) = &self.recorder {
            if r.files.len() != self.stats.files.len() {
                self.stats.files = r.files.clone();
            }
        }
        if let Ok(mut s) = shared.lock() {
            *s = self.stats.clone();
        }
    }
}
