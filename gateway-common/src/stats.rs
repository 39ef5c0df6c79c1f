//! Per-stream RTP statistics: the per-CPU slot the XDP program updates
//! ([`StreamStats`], [`update`]) and the merge of all CPUs' slots into one
//! view ([`merge`]).
//!
//! Sequence accounting follows RFC 3550 appendix A.1/A.3: the extended highest
//! sequence number, a base, and `lost = expected - received`, where
//! `expected = highest - base + 1`. Unlike A.3, duplicates are recognised
//! (a 64-packet window below the highest sequence number) and not counted as
//! received, so loss is exact under duplication; packets older than the window
//! are counted as out of order and received. A jump of more than
//! [`MAX_DROPOUT`] ahead or [`MAX_MISORDER`] behind is taken as a sequence
//! restart once a second, consecutive packet confirms it (A.1's `bad_seq`); the
//! loss so far is then kept in `lost_prev`.
//!
//! Interarrival jitter is RFC 3550 A.8 in timestamp units, kept scaled by 16.
//!
//! Per-CPU slots: a flow normally stays on one CPU (one RX queue), but if it
//! moves, every CPU keeps its own sequence window; [`merge`] aligns the CPUs'
//! extended sequence numbers to the one that saw the most recent packet and
//! adds up what they received, so loss stays right across CPU moves and
//! sequence wrap. Duplicates spread over two CPUs are not recognised.

use crate::rtp::RtpHeader;

/// A forward jump larger than this (in packets) is a suspected restart.
pub const MAX_DROPOUT: u16 = 3000;
/// A packet this far (or more) behind the highest is a suspected restart.
pub const MAX_MISORDER: u16 = 100;
/// Width of the duplicate-detection window below the highest sequence number.
pub const DUP_WINDOW: u64 = 64;

/// `StreamStats::flags`.
pub const SEQ_INIT: u8 = 1;
/// `bad_seq` holds a candidate restart sequence number.
pub const BAD_SEQ_VALID: u8 = 2;

/// Default RTP clock for video in GB28181 (PS, H.264, H.265).
pub const DEFAULT_CLOCK_RATE: u32 = 90_000;

/// One CPU's statistics for one stream: exactly two cache lines, so that the
/// slots of different CPUs never share a line (the array is page aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// All packets matched to the flow (including duplicates and SSRC mismatches).
    pub packets: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the first and last packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Bit i set: extended sequence number `max_seq - i` was received.
    pub seen_window: u64,
    /// Distinct sequence numbers received in the current sequence epoch.
    pub received: u64,
    /// Lowest and highest extended sequence numbers of the current epoch.
    pub base_seq: u64,
    pub max_seq: u64,
    /// Loss accumulated in earlier epochs (before a sequence restart or a
    /// change of SSRC).
    pub lost_prev: u64,
    pub out_of_order: u32,
    pub duplicates: u32,
    /// Packets with the marker bit (end of a video frame).
    pub frames: u32,
    /// Packets whose SSRC is not the one the flow expects.
    pub ssrc_mismatch: u32,
    /// UDP packets on the flow's address/port that are not valid RTP.
    pub not_rtp: u32,
    /// RFC 3550 A.8 interarrival jitter, timestamp units x 16.
    pub jitter: u32,
    /// Last (arrival - RTP timestamp) in timestamp units.
    pub last_transit: u32,
    /// SSRC of the current epoch.
    pub ssrc: u32,
    pub bad_seq: u32,
    /// Sequence restarts and SSRC changes seen.
    pub restarts: u32,
    pub last_pt: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// RTP timestamp of the last packet (the XDP program reads the clock
    /// only when it changes: once per video frame).
    pub last_ts: u32,
    pub _reserved: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<StreamStats>() == 128);

impl StreamStats {
    /// Loss of the current epoch (never negative).
    #[inline(always)]
    pub fn epoch_lost(&self) -> u64 {
        if self.flags & SEQ_INIT == 0 {
            return 0;
        }
        let expected = self.max_seq.wrapping_sub(self.base_seq).wrapping_add(1);
        expected.saturating_sub(self.received)
    }

    #[inline(always)]
    fn start_epoch(&mut self, ext: u64, ssrc: u32) {
        self.lost_prev = self.lost_prev.wrapping_add(self.epoch_lost());
        self.base_seq = ext;
        self.max_seq = ext;
        self.received = 1;
        self.seen_window = 1;
        self.ssrc = ssrc;
        self.flags = SEQ_INIT;
    }
}

/// Converts a monotonic time in ns into RTP timestamp units at `rate` Hz
/// (microsecond resolution; no overflow for centuries of uptime at 90 kHz).
#[inline(always)]
pub fn ns_to_units(ns: u64, rate: u32) -> u32 {
    ((ns / 1_000) * rate as u64 / 1_000_000) as u32
}

/// The arrival time to account a packet with: a packet that carries the
/// previous packet's RTP timestamp and SSRC (the rest of a video frame,
/// sent in one burst) reuses that packet's arrival time, so the caller
/// reads the clock once per frame (`None`: read it). Jitter is then the
/// spread of frames' arrivals, which is what a player's buffer absorbs;
/// within a burst the difference is a few microseconds.
#[inline(always)]
pub fn reuse_arrival(s: &StreamStats, h: &RtpHeader) -> Option<u64> {
    (s.flags & SEQ_INIT != 0 && s.last_ns != 0 && s.last_ts == h.timestamp && s.ssrc == h.ssrc)
        .then_some(s.last_ns)
}

/// Accounts one RTP packet of `len` UDP payload bytes that arrived at
/// `now_ns` into this CPU's slot. `expected_ssrc`: the SSRC the flow insists
/// on, if any. Never panics; all arithmetic wraps.
#[inline(always)]
pub fn update(
    s: &mut StreamStats,
    h: &RtpHeader,
    len: u32,
    now_ns: u64,
    clock_rate: u32,
    expected_ssrc: Option<u32>,
) {
    s.packets = s.packets.wrapping_add(1);
    s.bytes = s.bytes.wrapping_add(len as u64);
    if s.first_ns == 0 {
        s.first_ns = now_ns;
    }
    s.last_ns = now_ns;
    s.last_pt = h.payload_type;
    s.last_ts = h.timestamp;

    if let Some(want) = expected_ssrc {
        if h.ssrc != want {
            s.ssrc_mismatch = s.ssrc_mismatch.wrapping_add(1);
            return;
        }
    }

    let rate = if clock_rate == 0 {
        DEFAULT_CLOCK_RATE
    } else {
        clock_rate
    };
    let transit = ns_to_units(now_ns, rate).wrapping_sub(h.timestamp);

    if s.flags & SEQ_INIT == 0 || s.ssrc != h.ssrc {
        if s.flags & SEQ_INIT != 0 {
            s.restarts = s.restarts.wrapping_add(1);
        }
        s.start_epoch(h.seq as u64, h.ssrc);
        s.last_transit = transit;
        s.jitter = 0;
        if h.marker {
            s.frames = s.frames.wrapping_add(1);
        }
        return;
    }

    let delta = h.seq.wrapping_sub(s.max_seq as u16);
    let fresh;
    if delta != 0 && delta < 0x8000 {
        // Ahead of the highest.
        if delta > MAX_DROPOUT {
            if !confirm_restart(s, h) {
                return;
            }
            restart(s, h);
            s.last_transit = transit;
            fresh = true;
        } else {
            s.max_seq = s.max_seq.wrapping_add(delta as u64);
            s.seen_window = s.seen_window.checked_shl(delta as u32).unwrap_or(0) | 1;
            s.received = s.received.wrapping_add(1);
            fresh = true;
        }
    } else if delta == 0 {
        s.duplicates = s.duplicates.wrapping_add(1);
        fresh = false;
    } else {
        // Behind the highest.
        let back = 0u16.wrapping_sub(delta);
        if back >= MAX_MISORDER {
            if !confirm_restart(s, h) {
                return;
            }
            restart(s, h);
            s.last_transit = transit;
            fresh = true;
        } else {
            let back = back as u64;
            let ext = s.max_seq.wrapping_sub(back);
            let bit = 1u64.checked_shl(back as u32).unwrap_or(0);
            if back < DUP_WINDOW && s.seen_window & bit != 0 {
                s.duplicates = s.duplicates.wrapping_add(1);
                fresh = false;
            } else {
                s.seen_window |= bit;
                s.out_of_order = s.out_of_order.wrapping_add(1);
                s.received = s.received.wrapping_add(1);
                if ext < s.base_seq {
                    s.base_seq = ext;
                }
                fresh = true;
            }
        }
    }
    s.flags &= !BAD_SEQ_VALID;
    if !fresh {
        return;
    }
    if h.marker {
        s.frames = s.frames.wrapping_add(1);
    }
    // RFC 3550 A.8.
    let d = transit.wrapping_sub(s.last_transit) as i32;
    s.last_transit = transit;
    let d = d.unsigned_abs();
    s.jitter = s
        .jitter
        .wrapping_add(d)
        .wrapping_sub((s.jitter.wrapping_add(8)) >> 4);
}

/// RFC 3550 A.1 `bad_seq`: a packet far from the expected sequence is only
/// believed when the next packet follows it. Returns true when `h` confirms a
/// restart announced by the previous packet; otherwise remembers `h`.
#[inline(always)]
fn confirm_restart(s: &mut StreamStats, h: &RtpHeader) -> bool {
    if s.flags & BAD_SEQ_VALID != 0 && h.seq as u32 == s.bad_seq {
        true
    } else {
        s.bad_seq = h.seq.wrapping_add(1) as u32;
        s.flags |= BAD_SEQ_VALID;
        false
    }
}

/// Starts a new epoch at the confirmed restart: the previous (suspicious)
/// packet `h.seq - 1` and this one are its first two packets.
#[inline(always)]
fn restart(s: &mut StreamStats, h: &RtpHeader) {
    s.restarts = s.restarts.wrapping_add(1);
    // Keep the extended number >= 1 so that the previous packet fits below it.
    let ext = h.seq as u64 + if h.seq == 0 { 65536 } else { 0 };
    s.start_epoch(ext, h.ssrc);
    s.base_seq = ext - 1;
    s.received = 2;
    s.seen_window = 0b11;
}

/// One stream's statistics merged over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub packets: u64,
    pub bytes: u64,
    /// Distinct packets received in sequence accounting.
    pub received: u64,
    /// Extended highest sequence number (cycles << 16 | seq).
    pub highest_seq: u64,
    pub expected: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub frames: u64,
    pub ssrc_mismatch: u64,
    pub not_rtp: u64,
    pub restarts: u64,
    /// Jitter in timestamp units (the slot value / 16), of the current CPU.
    pub jitter: u32,
    pub ssrc: u32,
    pub last_pt: u8,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Merges one stream's per-CPU slots. Slots that never saw a packet are
/// ignored. The CPU with the most recent packet is the reference for SSRC,
/// payload type and jitter; the other CPUs' extended sequence numbers are
/// shifted by whole 65536-cycles to line up with it.
pub fn merge(slots: &[StreamStats]) -> StreamSummary {
    let mut out = StreamSummary::default();
    let mut reference: Option<&StreamStats> = None;
    for s in slots {
        if s.packets == 0 {
            continue;
        }
        if reference.is_none_or(|r| s.last_ns > r.last_ns) {
            reference = Some(s);
        }
    }
    let Some(r) = reference else {
        // No RTP yet; non-RTP packets may still have been seen.
        out.not_rtp = slots.iter().map(|s| s.not_rtp as u64).sum();
        return out;
    };
    out.ssrc = r.ssrc;
    out.last_pt = r.last_pt;
    out.jitter = r.jitter >> 4;
    out.first_ns = u64::MAX;

    let mut base = u64::MAX;
    let mut max = 0u64;
    let mut any_seq = false;
    for s in slots {
        out.not_rtp += s.not_rtp as u64;
        if s.packets == 0 {
            continue;
        }
        out.packets += s.packets;
        out.bytes += s.bytes;
        out.out_of_order += s.out_of_order as u64;
        out.duplicates += s.duplicates as u64;
        out.frames += s.frames as u64;
        out.ssrc_mismatch += s.ssrc_mismatch as u64;
        out.restarts += s.restarts as u64;
        out.lost += s.lost_prev;
        out.first_ns = out.first_ns.min(s.first_ns);
        out.last_ns = out.last_ns.max(s.last_ns);
        if s.flags & SEQ_INIT == 0 {
            continue;
        }
        if s.ssrc != r.ssrc || r.flags & SEQ_INIT == 0 {
            // An older source on this CPU: its epoch is closed.
            out.lost += s.epoch_lost();
            continue;
        }
        // Align this CPU's cycle count with the reference's.
        let diff = r.max_seq as i64 - s.max_seq as i64;
        let shift = (diff + 32768).div_euclid(65536) * 65536;
        let b = (s.base_seq as i64 + shift).max(0) as u64;
        let m = (s.max_seq as i64 + shift).max(0) as u64;
        base = base.min(b);
        max = max.max(m);
        out.received += s.received;
        any_seq = true;
    }
    if any_seq {
        out.highest_seq = max;
        out.expected = max - base + 1;
        out.lost += out.expected.saturating_sub(out.received);
    }
    if out.first_ns == u64::MAX {
        out.first_ns = 0;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(seq: u16, ts: u32, marker: bool) -> RtpHeader {
        RtpHeader {
            seq,
            timestamp: ts,
            ssrc: 7,
            payload_type: 96,
            marker,
        }
    }

    /// Feeds sequence numbers 1 ms apart with timestamps that match the
    /// arrival exactly (zero jitter).
    fn feed(s: &mut StreamStats, seqs: &[u16]) {
        for (i, &q) in seqs.iter().enumerate() {
            let now = 1_000_000_000 + i as u64 * 1_000_000;
            let ts = ns_to_units(now, 90_000);
            update(s, &hdr(q, ts, q % 10 == 9), 100, now, 90_000, None);
        }
    }

    #[test]
    fn in_order_no_loss() {
        let mut s = StreamStats::default();
        let seqs: Vec<u16> = (0..100).collect();
        feed(&mut s, &seqs);
        let m = merge(&[s]);
        assert_eq!(m.packets, 100);
        assert_eq!(m.bytes, 10_000);
        assert_eq!(m.lost, 0);
        assert_eq!(m.expected, 100);
        assert_eq!(m.highest_seq, 99);
        assert_eq!(m.frames, 10);
        assert_eq!(m.jitter, 0);
        assert_eq!((m.out_of_order, m.duplicates), (0, 0));
    }

    #[test]
    fn gaps_reorder_duplicates() {
        let mut s = StreamStats::default();
        // 0..=9, lose 10 and 11, 13 before 12, 12 duplicated, 14 duplicated twice.
        let mut seqs: Vec<u16> = (0..10).collect();
        seqs.extend([13, 12, 12, 14, 14, 14, 15]);
        feed(&mut s, &seqs);
        let m = merge(&[s]);
        assert_eq!(m.packets, seqs.len() as u64);
        assert_eq!(m.expected, 16);
        assert_eq!(m.received, 14);
        assert_eq!(m.lost, 2);
        assert_eq!(m.out_of_order, 1);
        assert_eq!(m.duplicates, 3);
    }

    #[test]
    fn wrap_at_65535() {
        let mut s = StreamStats::default();
        let seqs: Vec<u16> = (65530..=65535).chain(0..5).filter(|&q| q != 2).collect();
        feed(&mut s, &seqs);
        let m = merge(&[s]);
        assert_eq!(m.highest_seq, 65536 + 4);
        assert_eq!(m.expected, 11);
        assert_eq!(m.lost, 1);
        assert_eq!(m.out_of_order, 0);
    }

    #[test]
    fn late_packet_before_first_extends_base() {
        let mut s = StreamStats::default();
        feed(&mut s, &[10, 11, 9, 12]);
        let m = merge(&[s]);
        assert_eq!(m.expected, 4);
        assert_eq!(m.lost, 0);
        assert_eq!(m.out_of_order, 1);
    }

    #[test]
    fn restart_needs_confirmation() {
        let mut s = StreamStats::default();
        feed(&mut s, &[0, 1, 2, 3]);
        // One stray packet far ahead: ignored for sequence accounting.
        feed(&mut s, &[40000]);
        feed(&mut s, &[4, 5]);
        let m = merge(&[s]);
        assert_eq!((m.expected, m.lost, m.restarts), (6, 0, 0));
        // A real restart: two consecutive packets far away.
        feed(&mut s, &[30000, 30001, 30002]);
        let m = merge(&[s]);
        assert_eq!(m.restarts, 1);
        assert_eq!(m.lost, 0);
        assert_eq!(m.highest_seq, 30002);
        assert_eq!(m.expected, 3);
    }

    #[test]
    fn ssrc_expectation() {
        let mut s = StreamStats::default();
        let other = RtpHeader {
            ssrc: 99,
            ..hdr(5, 0, false)
        };
        update(&mut s, &hdr(1, 0, false), 10, 1, 90_000, Some(7));
        update(&mut s, &other, 10, 2, 90_000, Some(7));
        update(&mut s, &hdr(2, 0, false), 10, 3, 90_000, Some(7));
        let m = merge(&[s]);
        assert_eq!(
            (m.packets, m.ssrc_mismatch, m.received, m.lost),
            (3, 1, 2, 0)
        );
    }

    #[test]
    fn ssrc_change_starts_new_epoch() {
        let mut s = StreamStats::default();
        feed(&mut s, &[0, 1, 3]); // one lost
        let other = RtpHeader {
            ssrc: 99,
            ..hdr(500, 0, false)
        };
        update(&mut s, &other, 10, 2_000_000_000, 90_000, None);
        let m = merge(&[s]);
        assert_eq!((m.restarts, m.lost, m.ssrc, m.expected), (1, 1, 99, 1));
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut s = StreamStats::default();
        // Packets 20 ms apart in RTP time, arriving alternately 0 and 5 ms late.
        let mut j = 0f64;
        let mut prev_transit = None::<f64>;
        for i in 0..50u16 {
            let ts = i as u32 * 1800;
            let late_ms = if i % 2 == 0 { 0.0 } else { 5.0 };
            let now = 1_000_000_000u64 + i as u64 * 20_000_000 + (late_ms * 1e6) as u64;
            update(&mut s, &hdr(i, ts, false), 10, now, 90_000, None);
            let transit = ns_to_units(now, 90_000) as f64 - ts as f64;
            if let Some(p) = prev_transit {
                let d: f64 = transit - p;
                j += (d.abs() - j) / 16.0;
            }
            prev_transit = Some(transit);
        }
        let got = merge(&[s]).jitter as f64;
        assert!((got - j).abs() <= 1.0, "jitter {got} vs reference {j}");
        assert!(
            got > 300.0,
            "5 ms alternating lateness is ~450 units of jitter, got {got}"
        );
    }

    #[test]
    fn merge_across_cpus_and_wrap() {
        // CPU 0 sees 65000..=65535, then the flow moves to CPU 1 for 0..=99
        // (with 50 lost), then back to CPU 0 for 100..=199.
        let mut a = StreamStats::default();
        let mut b = StreamStats::default();
        let first: Vec<u16> = (65000..=65535).collect();
        feed(&mut a, &first);
        let second: Vec<u16> = (0..100).filter(|q| *q != 50).collect();
        for (i, &q) in second.iter().enumerate() {
            update(
                &mut b,
                &hdr(q, 0, false),
                10,
                5_000_000_000 + i as u64,
                90_000,
                None,
            );
        }
        for (i, q) in (100..200u16).enumerate() {
            update(
                &mut a,
                &hdr(q, 0, false),
                10,
                6_000_000_000 + i as u64,
                90_000,
                None,
            );
        }
        let m = merge(&[a, b]);
        assert_eq!(m.expected, 536 + 200);
        assert_eq!(m.received, 536 + 199);
        assert_eq!(m.lost, 1);
        assert_eq!(m.highest_seq, 65536 + 199);
    }

    #[test]
    fn not_rtp_counted_on_slots_without_rtp() {
        let a = StreamStats {
            not_rtp: 2,
            ..Default::default()
        };
        let mut b = StreamStats::default();
        feed(&mut b, &[1, 2]);
        b.not_rtp = 1;
        assert_eq!(merge(&[a, b]).not_rtp, 3);
        assert_eq!(merge(&[a]).not_rtp, 2);
    }

    #[test]
    fn empty_slots_merge_to_zero() {
        assert_eq!(
            merge(&[StreamStats::default(); 4]),
            StreamSummary::default()
        );
    }
}
