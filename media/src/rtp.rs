//! RTP (RFC 3550): packet parsing, a header writer for senders, per-SSRC
//! sequence and jitter statistics ([`SeqStats`]) and a small reorder buffer
//! ([`Reorder`]).

use thiserror::Error;

/// Length of the fixed RTP header.
pub const HEADER_LEN: usize = 12;

/// Why a datagram is not a valid RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the fixed 12-byte header.
    #[error("{0} bytes is shorter than the 12-byte RTP header")]
    TooShort(usize),
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    /// The CSRC list runs past the end of the packet.
    #[error("CSRC list of {0} entries runs past the end of the packet")]
    Csrc(u8),
    /// The header extension runs past the end of the packet.
    #[error("header extension runs past the end of the packet")]
    Extension,
    /// The padding count is 0 or larger than the bytes after the headers.
    #[error("padding count {0} is zero or larger than the packet body")]
    Padding(u8),
}

/// A parsed RTP packet borrowing from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Always 2.
    pub version: u8,
    /// The P bit (the padding is already removed from `payload`).
    pub padding: bool,
    /// The M bit: in video, the last packet of a frame.
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Number of CSRC entries (see [`RtpPacket::csrcs`]).
    pub csrc_count: u8,
    /// Header extension: the 16-bit profile value and the extension data.
    pub extension: Option<(u16, &'a [u8])>,
    /// Payload without padding.
    pub payload: &'a [u8],
    csrc: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// The contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrc
            .as_chunks::<4>()
            .0
            .iter()
            .map(|c| u32::from_be_bytes(*c))
    }
}

/// Parses one RTP packet. Every length is checked; never panics.
pub fn parse(buf: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    if buf.len() < HEADER_LEN {
        return Err(RtpError::TooShort(buf.len()));
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = buf[0] & 0x20 != 0;
    let has_ext = buf[0] & 0x10 != 0;
    let csrc_count = buf[0] & 0x0F;
    let mut off = HEADER_LEN + 4 * csrc_count as usize;
    let csrc = buf.get(HEADER_LEN..off).ok_or(RtpError::Csrc(csrc_count))?;
    let extension = if has_ext {
        let h = buf.get(off..off + 4).ok_or(RtpError::Extension)?;
        let profile = u16::from_be_bytes([h[0], h[1]]);
        let words = u16::from_be_bytes([h[2], h[3]]) as usize;
        let end = off + 4 + 4 * words;
        let data = buf.get(off + 4..end).ok_or(RtpError::Extension)?;
        off = end;
        Some((profile, data))
    } else {
        None
    };
    let mut payload = &buf[off..];
    if padding {
        let count = buf[buf.len() - 1];
        if count == 0 || count as usize > payload.len() {
            return Err(RtpError::Padding(count));
        }
        payload = &payload[..payload.len() - count as usize];
    }
    Ok(RtpPacket {
        version,
        padding,
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7F,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        csrc_count,
        extension,
        payload,
        csrc,
    })
}

/// The fixed header a sender writes (version 2, no padding, extension or
/// CSRC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (set on the last packet of a video frame).
    pub marker: bool,
    /// Payload type (7 bits; higher bits are ignored).
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// Appends the 12 header bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(0x80);
        out.push(((self.marker as u8) << 7) | (self.pt & 0x7F));
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
    }
}

/// A forward jump larger than this many packets is a suspected restart.
pub const MAX_DROPOUT: u16 = 3000;
/// A packet this many packets (or more) behind the highest is a suspected
/// restart.
pub const MAX_MISORDER: u16 = 100;
/// Width of the duplicate-detection window below the highest sequence number.
const DUP_WINDOW: u64 = 64;

/// How [`SeqStats::record`] classified a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The first packet of the stream.
    First,
    /// Ahead of the highest sequence number so far (possibly after a gap).
    InOrder,
    /// Behind the highest, not seen before.
    OutOfOrder,
    /// Already received (within the last 64 sequence numbers).
    Duplicate,
    /// Far from the expected sequence number; ignored unless the next
    /// packet follows it (RFC 3550 A.1 probation).
    Probation,
    /// Confirmed a sequence restart; accounting starts a new epoch.
    Restart,
}

/// Per-SSRC receive statistics, RFC 3550 appendix A.1 (sequence numbers,
/// loss) and A.8 (interarrival jitter). Keep one per SSRC.
///
/// Loss is `expected - received` where duplicates are recognised in a
/// 64-packet window and not counted as received, so duplication never hides
/// loss, and loss is never negative. (A packet 64 to 99 behind the highest
/// cannot be told from a duplicate and counts as received and out of
/// order.) A jump of more than [`MAX_DROPOUT`]
/// ahead or [`MAX_MISORDER`] behind is believed to be a sender restart only
/// when the next packet follows it; the loss so far is kept.
#[derive(Clone, Debug)]
pub struct SeqStats {
    clock_rate: u32,
    packets: u64,
    bytes: u64,
    started: bool,
    max_seq: u64,
    base_seq: u64,
    received: u64,
    window: u64,
    expected_prev: u64,
    lost_prev: u64,
    out_of_order: u64,
    duplicates: u64,
    restarts: u64,
    bad_seq: Option<u16>,
    jitter: f64,
    last_transit: Option<u32>,
}

impl SeqStats {
    /// Statistics for a stream with this RTP clock rate in Hz (90000 for
    /// GB28181 video; 8000 for G.711). A rate of 0 is taken as 90000.
    pub fn new(clock_rate: u32) -> Self {
        SeqStats {
            clock_rate: if clock_rate == 0 { 90_000 } else { clock_rate },
            packets: 0,
            bytes: 0,
            started: false,
            max_seq: 0,
            base_seq: 0,
            received: 0,
            window: 0,
            expected_prev: 0,
            lost_prev: 0,
            out_of_order: 0,
            duplicates: 0,
            restarts: 0,
            bad_seq: None,
            jitter: 0.0,
            last_transit: None,
        }
    }

    /// Accounts one packet: its sequence number, RTP timestamp, length in
    /// bytes (any measure the caller prefers) and arrival time in ns on a
    /// monotonic clock.
    pub fn record(&mut self, seq: u16, timestamp: u32, len: usize, arrival_ns: u64) -> Arrival {
        self.packets += 1;
        self.bytes += len as u64;
        let arrival = if !self.started {
            self.start_epoch(seq as u64);
            self.started = true;
            Arrival::First
        } else {
            let delta = seq.wrapping_sub(self.max_seq as u16);
            if delta == 0 {
                self.duplicates += 1;
                Arrival::Duplicate
            } else if delta < 0x8000 {
                if delta > MAX_DROPOUT {
                    self.probation(seq)
                } else {
                    self.max_seq += delta as u64;
                    self.window = self.window.checked_shl(delta as u32).unwrap_or(0) | 1;
                    self.received += 1;
                    Arrival::InOrder
                }
            } else {
                let back = 0u16.wrapping_sub(delta);
                if back >= MAX_MISORDER {
                    self.probation(seq)
                } else {
                    let back = back as u64;
                    let bit = 1u64.checked_shl(back as u32).unwrap_or(0);
                    if back < DUP_WINDOW && self.window & bit != 0 {
                        self.duplicates += 1;
                        Arrival::Duplicate
                    } else {
                        self.window |= bit;
                        self.out_of_order += 1;
                        self.received += 1;
                        // Extended numbers start at 65536, so this never
                        // goes below zero.
                        self.base_seq = self.base_seq.min(self.max_seq - back);
                        Arrival::OutOfOrder
                    }
                }
            }
        };
        if !matches!(arrival, Arrival::Probation) {
            self.bad_seq = None;
        }
        if matches!(arrival, Arrival::Duplicate | Arrival::Probation) {
            return arrival;
        }
        // RFC 3550 A.8, in timestamp units.
        let units = (arrival_ns as u128 * self.clock_rate as u128 / 1_000_000_000) as u32;
        let transit = units.wrapping_sub(timestamp);
        if let (Some(last), false) = (self.last_transit, arrival == Arrival::Restart) {
            let d = (transit.wrapping_sub(last) as i32).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        arrival
    }

    fn start_epoch(&mut self, ext: u64) {
        self.expected_prev += self.epoch_expected();
        self.lost_prev += self.epoch_lost();
        // Start at 65536 so that packets behind the first stay positive.
        let ext = ext + 65536;
        self.base_seq = ext;
        self.max_seq = ext;
        self.received = 1;
        self.window = 1;
    }

    fn probation(&mut self, seq: u16) -> Arrival {
        if self.bad_seq == Some(seq) {
            // Confirmed: the previous packet (seq - 1) and this one open
            // the new epoch.
            self.restarts += 1;
            self.start_epoch(seq as u64);
            self.base_seq -= 1;
            self.received = 2;
            self.window = 0b11;
            self.bad_seq = None;
            Arrival::Restart
        } else {
            self.bad_seq = Some(seq.wrapping_add(1));
            Arrival::Probation
        }
    }

    fn epoch_expected(&self) -> u64 {
        if self.started {
            self.max_seq - self.base_seq + 1
        } else {
            0
        }
    }

    fn epoch_lost(&self) -> u64 {
        self.epoch_expected().saturating_sub(self.received)
    }

    /// Packets recorded (all of them, duplicates included).
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Sum of the lengths passed to [`SeqStats::record`].
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Extended highest sequence number (cycles << 16 | seq) of the current
    /// epoch, `None` before the first packet.
    pub fn extended_highest(&self) -> Option<u64> {
        self.started.then(|| self.max_seq - 65536)
    }

    /// Packets expected: the span from the lowest to the highest sequence
    /// number seen, summed over epochs.
    pub fn expected(&self) -> u64 {
        self.expected_prev + self.epoch_expected()
    }

    /// Distinct packets received in the sequence accounting (duplicates and
    /// probation packets excluded).
    pub fn received(&self) -> u64 {
        self.expected().saturating_sub(self.lost())
    }

    /// Packets lost (never negative).
    pub fn lost(&self) -> u64 {
        self.lost_prev + self.epoch_lost()
    }

    /// Packets that arrived behind the highest sequence number.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Duplicates recognised.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Confirmed sequence restarts.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Interarrival jitter (RFC 3550 A.8) in timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }
}

/// What [`Reorder`] hands back, in sequence order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released<T> {
    /// The next packet.
    Packet {
        /// Its sequence number.
        seq: u16,
        /// The packet as pushed.
        item: T,
    },
    /// `count` packets starting at `first` were given up on (lost or too
    /// late); the packets after them follow.
    Gap {
        /// First missing sequence number.
        first: u16,
        /// How many are missing.
        count: u32,
    },
}

/// Counters of a [`Reorder`] buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Packets released.
    pub released: u64,
    /// Gaps reported.
    pub gaps: u64,
    /// Sequence numbers given up on (sum of the gap counts).
    pub lost: u64,
    /// Packets that arrived after their place was released or given up,
    /// and stray packets far from the sequence that no restart confirmed.
    pub late: u64,
    /// Packets dropped because the same sequence number was held.
    pub duplicates: u64,
    /// Sequence restarts followed.
    pub resets: u64,
}

/// Default capacity of a [`Reorder`] buffer in packets.
pub const DEFAULT_REORDER_CAPACITY: usize = 32;
/// Default longest wait for a missing packet, in ns.
pub const DEFAULT_REORDER_DELAY_NS: u64 = 100_000_000;

struct Slot<T> {
    item: T,
    arrival_ns: u64,
}

/// A reorder buffer: releases packets in sequence order, waiting for a
/// missing one until the buffer is full (`capacity` sequence numbers ahead)
/// or until a held packet has waited `max_delay_ns` (checked when the caller
/// calls [`Reorder::poll`] or pushes). Gaps given up on are reported as
/// [`Released::Gap`].
///
/// The stream starts the same way: the first packets are held until the
/// buffer is full or the first one has waited `max_delay_ns`, so that a
/// packet overtaken at the very start still goes out first. A jump of more
/// than [`MAX_DROPOUT`] ahead or [`MAX_MISORDER`] behind is followed as a
/// sender restart once the next packet confirms it.
pub struct Reorder<T> {
    slots: Vec<Option<Slot<T>>>,
    /// Extended sequence number of the next packet to release.
    next: Option<u64>,
    /// Highest extended sequence number inserted.
    top: u64,
    /// Something was released (before that, `next` may still move back).
    started: bool,
    held: usize,
    max_delay_ns: u64,
    probation: Option<(u16, T, u64)>,
    stats: ReorderStats,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Reorder::new(DEFAULT_REORDER_CAPACITY, DEFAULT_REORDER_DELAY_NS)
    }
}

impl<T> Reorder<T> {
    /// A buffer for `capacity` packets (at least 1, at most 4096) that waits
    /// at most `max_delay_ns` for a missing packet.
    pub fn new(capacity: usize, max_delay_ns: u64) -> Self {
        let capacity = capacity.clamp(1, 4096);
        Reorder {
            slots: (0..capacity).map(|_| None).collect(),
            next: None,
            top: 0,
            started: false,
            held: 0,
            max_delay_ns,
            probation: None,
            stats: ReorderStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Packets currently held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Adds a packet that arrived at `now_ns`; whatever can be released
    /// (including packets whose wait expired) is appended to `out`.
    pub fn push(&mut self, seq: u16, item: T, now_ns: u64, out: &mut Vec<Released<T>>) {
        let cap = self.slots.len() as u64;
        let Some(next) = self.next else {
            let ext = seq as u64 + 65536;
            self.next = Some(ext);
            self.insert(ext, item, now_ns);
            self.poll(now_ns, out);
            return;
        };
        let delta = seq.wrapping_sub(next as u16);
        let far = if delta < 0x8000 {
            delta > MAX_DROPOUT
        } else {
            0u16.wrapping_sub(delta) >= MAX_MISORDER
        };
        if far {
            match self.probation.take() {
                Some((pseq, pitem, parr)) if pseq.wrapping_add(1) == seq => {
                    // Confirmed restart: release what is held, follow.
                    self.release_all(out);
                    self.stats.resets += 1;
                    let base = pseq as u64 + 65536;
                    self.next = Some(base);
                    self.started = true;
                    self.insert(base, pitem, parr);
                    self.insert(base + 1, item, now_ns);
                    self.release_run(out);
                }
                stray => {
                    if stray.is_some() {
                        self.stats.late += 1;
                    }
                    self.probation = Some((seq, item, now_ns));
                }
            }
            self.poll(now_ns, out);
            return;
        }
        if self.probation.take().is_some() {
            self.stats.late += 1;
        }
        if delta >= 0x8000 {
            let ext = next - 0u16.wrapping_sub(delta) as u64;
            if !self.started && self.top - ext < cap {
                // Overtaken before anything went out: start earlier.
                self.next = Some(ext);
                self.insert(ext, item, now_ns);
            } else {
                self.stats.late += 1;
            }
        } else {
            let ext = next + delta as u64;
            if ext >= next + cap {
                // No room: give up on what is missing before the window.
                self.advance_to(ext + 1 - cap, out);
            }
            if self.slots[(ext % cap) as usize].is_some() {
                self.stats.duplicates += 1;
            } else {
                self.insert(ext, item, now_ns);
            }
            self.release_run(out);
        }
        self.poll(now_ns, out);
    }

    /// Releases packets that waited longer than the maximum delay (giving
    /// up on the gaps before them).
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<Released<T>>) {
        loop {
            let Some(next) = self.next else { return };
            if self.held == 0 {
                return;
            }
            let cap = self.slots.len() as u64;
            // The highest held packet that waited too long.
            let mut target = None;
            for e in next..next + cap {
                if let Some(s) = &self.slots[(e % cap) as usize] {
                    if now_ns.saturating_sub(s.arrival_ns) >= self.max_delay_ns {
                        target = Some(e);
                    }
                }
            }
            let Some(t) = target else { return };
            self.advance_to(t, out);
            self.release_run(out);
        }
    }

    /// Releases everything held, reporting the gaps between held packets
    /// (end of stream).
    pub fn flush(&mut self, out: &mut Vec<Released<T>>) {
        self.release_all(out);
        if let Some((seq, item, _)) = self.probation.take() {
            self.stats.released += 1;
            out.push(Released::Packet { seq, item });
        }
    }

    fn insert(&mut self, ext: u64, item: T, arrival_ns: u64) {
        let cap = self.slots.len() as u64;
        self.slots[(ext % cap) as usize] = Some(Slot { item, arrival_ns });
        self.held += 1;
        if self.held == 1 || ext > self.top {
            self.top = ext;
        }
    }

    /// Releases the held packets with extended numbers below `target` in
    /// order, reporting the missing ones as gaps; `next` becomes `target`.
    fn advance_to(&mut self, target: u64, out: &mut Vec<Released<T>>) {
        let Some(next) = self.next else { return };
        self.started = true;
        if target <= next {
            return;
        }
        let cap = self.slots.len() as u64;
        let mut gap_start: Option<u64> = None;
        let end_of_scan = target.min(next + cap);
        for e in next..end_of_scan {
            match self.slots[(e % cap) as usize].take() {
                Some(s) => {
                    if let Some(g) = gap_start.take() {
                        self.report_gap(g, e - g, out);
                    }
                    self.held -= 1;
                    self.stats.released += 1;
                    out.push(Released::Packet {
                        seq: e as u16,
                        item: s.item,
                    });
                }
                None => {
                    gap_start.get_or_insert(e);
                }
            }
        }
        let g = match gap_start {
            Some(g) => Some(g),
            None if target > end_of_scan => Some(end_of_scan),
            None => None,
        };
        if let Some(g) = g {
            self.report_gap(g, target - g, out);
        }
        self.next = Some(target);
    }

    fn report_gap(&mut self, first: u64, count: u64, out: &mut Vec<Released<T>>) {
        self.stats.gaps += 1;
        self.stats.lost += count;
        out.push(Released::Gap {
            first: first as u16,
            count: count as u32,
        });
    }

    /// Releases the packets from `next` on while there is no hole (once the
    /// stream has started).
    fn release_run(&mut self, out: &mut Vec<Released<T>>) {
        let Some(mut next) = self.next else { return };
        if !self.started {
            return;
        }
        let cap = self.slots.len() as u64;
        while let Some(s) = self.slots[(next % cap) as usize].take() {
            self.held -= 1;
            self.stats.released += 1;
            out.push(Released::Packet {
                seq: next as u16,
                item: s.item,
            });
            next += 1;
        }
        self.next = Some(next);
    }

    fn release_all(&mut self, out: &mut Vec<Released<T>>) {
        let Some(next) = self.next else { return };
        if self.held == 0 {
            return;
        }
        let cap = self.slots.len() as u64;
        let last = (next..next + cap)
            .rev()
            .find(|e| self.slots[(e % cap) as usize].is_some());
        if let Some(last) = last {
            self.advance_to(last, out);
            self.release_run(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn packet(h: RtpHeader, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        h.write(&mut v);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn plain_header_round_trips() {
        let h = RtpHeader {
            marker: true,
            pt: 96,
            seq: 0xABCD,
            ts: 0x1234_5678,
            ssrc: 340_200_001,
        };
        let v = packet(h, b"hello");
        let p = parse(&v).unwrap();
        assert_eq!(p.version, 2);
        assert!(p.marker && !p.padding);
        assert_eq!(
            (p.payload_type, p.sequence, p.timestamp, p.ssrc),
            (96, 0xABCD, 0x1234_5678, 340_200_001)
        );
        assert_eq!(p.csrc_count, 0);
        assert_eq!(p.extension, None);
        assert_eq!(p.payload, b"hello");
    }

    #[test]
    fn csrc_extension_and_padding() {
        let mut v = vec![0x80 | 0x20 | 0x10 | 2, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        v.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 11]); // 2 CSRC
        v.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // 1-word extension
        v.extend_from_slice(b"abc");
        v.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let p = parse(&v).unwrap();
        assert!(p.padding && !p.marker);
        assert_eq!(p.csrc_count, 2);
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(p.extension, Some((0xBEDE, &[1u8, 2, 3, 4][..])));
        assert_eq!(p.payload, b"abc");

        // Padding that takes the whole body leaves an empty payload.
        let mut w = packet(RtpHeader::default(), &[9, 9, 3]);
        w[0] |= 0x20;
        assert_eq!(parse(&w).unwrap().payload, b"");
        // Zero padding count, or more than the body, is an error.
        let mut z = packet(RtpHeader::default(), &[1, 0]);
        z[0] |= 0x20;
        assert_eq!(parse(&z), Err(RtpError::Padding(0)));
        let mut big = packet(RtpHeader::default(), &[1, 4]);
        big[0] |= 0x20;
        assert_eq!(parse(&big), Err(RtpError::Padding(4)));
        let mut empty = packet(RtpHeader::default(), &[]);
        empty[0] |= 0x20;
        assert!(matches!(parse(&empty), Err(RtpError::Padding(_))));
    }

    #[test]
    fn version_must_be_2() {
        let mut v = packet(RtpHeader::default(), b"x");
        v[0] = 0x40;
        assert_eq!(parse(&v), Err(RtpError::Version(1)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut v = vec![0x80 | 0x20 | 0x10 | 3, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        v.extend_from_slice(&[0; 12]);
        v.extend_from_slice(&[0x10, 0x00, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8]);
        v.extend_from_slice(b"payload");
        v.extend_from_slice(&[0, 2]);
        assert_eq!(parse(&v).unwrap().payload, b"payload");
        let ext_start = 12 + 12;
        let body_start = ext_start + 12;
        for n in 0..v.len() {
            let r = parse(&v[..n]);
            assert!(r.is_err(), "prefix {n} parsed: {r:?}");
            let want = if n < 12 {
                RtpError::TooShort(n)
            } else if n < ext_start {
                RtpError::Csrc(3)
            } else if n < body_start {
                RtpError::Extension
            } else {
                // The last byte is taken as the padding count.
                RtpError::Padding(v[n - 1])
            };
            // A body whose last byte happens to be a valid count parses.
            if let (RtpError::Padding(c), true) = (want, n > body_start) {
                if c != 0 && c as usize <= n - body_start {
                    continue;
                }
            }
            assert_eq!(r, Err(want), "prefix {n}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(7);
        for _ in 0..20_000 {
            let n = rng.range(0, 80);
            let mut b = rng.bytes(n);
            if n > 0 {
                b[0] = 0x80 | (b[0] & 0x3F);
            }
            if let Ok(p) = parse(&b) {
                assert!(p.payload.len() <= b.len());
            }
        }
    }

    const NS_PER_UNIT: u64 = 1_000_000_000 / 90_000;

    /// Records `seqs` as packets 40 ms apart, perfectly timed.
    fn feed(s: &mut SeqStats, seqs: &[u16]) -> Vec<Arrival> {
        seqs.iter()
            .map(|&q| {
                let ts = q as u32 * 3600;
                s.record(q, ts, 100, ts as u64 * NS_PER_UNIT + 1_000_000_000)
            })
            .collect()
    }

    #[test]
    fn in_order_no_loss() {
        let mut s = SeqStats::new(90_000);
        let seqs: Vec<u16> = (0..50).collect();
        feed(&mut s, &seqs);
        assert_eq!((s.packets(), s.bytes()), (50, 5000));
        assert_eq!((s.expected(), s.lost(), s.received()), (50, 0, 50));
        assert_eq!(s.extended_highest(), Some(49));
        assert_eq!((s.out_of_order(), s.duplicates()), (0, 0));
        assert!(s.jitter() < 1.0, "perfect timing, jitter {}", s.jitter());
    }

    #[test]
    fn sequence_wrap_extends() {
        let mut s = SeqStats::new(90_000);
        let seqs: Vec<u16> = (65530..=65535).chain(0..5).collect();
        let a = feed(&mut s, &seqs);
        assert!(a[1..].iter().all(|&x| x == Arrival::InOrder));
        assert_eq!(s.extended_highest(), Some(65536 + 4));
        assert_eq!((s.expected(), s.lost()), (11, 0));
        // Out of order across the wrap.
        let mut s = SeqStats::new(90_000);
        let a = feed(&mut s, &[65534, 0, 65535, 1]);
        assert_eq!(a[2], Arrival::OutOfOrder);
        assert_eq!((s.expected(), s.lost(), s.out_of_order()), (4, 0, 1));
    }

    #[test]
    fn loss_duplicates_and_reorder_exact() {
        let mut s = SeqStats::new(90_000);
        // 0..=9, lose 10 and 11, 13 before 12, 12 twice, 14 three times,
        // 5 again (old duplicate), 16.
        let a = feed(
            &mut s,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 12, 12, 14, 14, 14, 5, 16],
        );
        assert_eq!(a[11], Arrival::OutOfOrder);
        assert_eq!(a[12], Arrival::Duplicate);
        assert_eq!(a[16], Arrival::Duplicate);
        assert_eq!(s.packets(), 18);
        assert_eq!(s.duplicates(), 4);
        assert_eq!(s.out_of_order(), 1);
        // Expected 0..=16 = 17; received 0..=9, 12, 13, 14, 16 = 14.
        assert_eq!((s.expected(), s.received(), s.lost()), (17, 14, 3));
        // A late arrival of 10 reduces loss.
        feed(&mut s, &[10]);
        assert_eq!(s.lost(), 2);
    }

    #[test]
    fn duplicates_never_hide_loss() {
        let mut s = SeqStats::new(90_000);
        let mut seqs = Vec::new();
        for q in 0..200u16 {
            if q % 10 == 3 {
                continue; // lost
            }
            seqs.push(q);
            if q % 7 == 0 {
                seqs.push(q); // duplicated
            }
        }
        feed(&mut s, &seqs);
        assert_eq!(s.lost(), 20);
        // Multiples of 7 below 200 (29) but 63 and 133 were lost.
        assert_eq!(s.duplicates(), 27);
        assert_eq!(s.expected(), 200);
    }

    #[test]
    fn lost_first_packets_are_not_counted_before_the_base() {
        let mut s = SeqStats::new(90_000);
        feed(&mut s, &[100, 101, 99, 103]);
        // 99 extends the base downwards; 102 is missing.
        assert_eq!((s.expected(), s.lost()), (5, 1));
    }

    #[test]
    fn restart_needs_confirmation() {
        let mut s = SeqStats::new(90_000);
        feed(&mut s, &[0, 1, 2, 4]); // 3 lost
        let a = feed(&mut s, &[30_000]);
        assert_eq!(a[0], Arrival::Probation);
        // A stray far packet, then normal packets: no restart.
        feed(&mut s, &[5]);
        assert_eq!((s.restarts(), s.lost()), (0, 1));
        let a = feed(&mut s, &[40_000, 40_001, 40_002]);
        assert_eq!(
            a,
            vec![Arrival::Probation, Arrival::Restart, Arrival::InOrder]
        );
        assert_eq!(s.restarts(), 1);
        // Old epoch: 0..=5, 3 lost; new: 40000..=40002 complete.
        assert_eq!((s.expected(), s.lost()), (9, 1));
        assert_eq!(s.extended_highest(), Some(40_002));
    }

    #[test]
    fn jitter_follows_rfc3550() {
        // Packets every 40 ms (3600 units); every other one arrives 5 ms
        // late, so |D| = 450 units for every packet after the first and
        // J_n = 450 * (1 - (15/16)^(n-1)).
        let mut s = SeqStats::new(90_000);
        let mut reference = 0.0f64;
        let mut last_transit: Option<f64> = None;
        for i in 0..200u64 {
            let ts = (i * 3600) as u32;
            let late = if i % 2 == 1 { 5_000_000 } else { 0 };
            let arrival = 2_000_000_000 + i * 40_000_000 + late;
            s.record(i as u16, ts, 1000, arrival);
            let transit = arrival as f64 * 90_000.0 / 1e9 - ts as f64;
            if let Some(l) = last_transit {
                reference += ((transit - l).abs() - reference) / 16.0;
            }
            last_transit = Some(transit);
            if i == 1 {
                assert!((s.jitter() - 450.0 / 16.0).abs() < 0.1, "{}", s.jitter());
            }
        }
        assert!(
            (s.jitter() - reference).abs() < 1.0,
            "{} vs {reference}",
            s.jitter()
        );
        assert!((s.jitter() - 450.0).abs() < 1.0, "{}", s.jitter());
        // 8 kHz clock: same lateness is 40 units.
        let mut s = SeqStats::new(8000);
        for i in 0..300u64 {
            let late = if i % 2 == 1 { 5_000_000 } else { 0 };
            s.record(i as u16, (i * 160) as u32, 160, i * 20_000_000 + late);
        }
        assert!((s.jitter() - 40.0).abs() < 1.0, "{}", s.jitter());
    }

    fn seqs_of(out: &[Released<u16>]) -> Vec<i64> {
        // Packets as their seq, gaps as -count.
        out.iter()
            .map(|r| match r {
                Released::Packet { seq, item } => {
                    assert_eq!(seq, item);
                    *seq as i64
                }
                Released::Gap { count, .. } => -(*count as i64),
            })
            .collect()
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn reorder_start_waits_for_overtaken_packets() {
        let mut r = Reorder::new(8, 20 * MS);
        let mut out = Vec::new();
        r.push(11, 11, 0, &mut out);
        r.push(12, 12, MS, &mut out);
        r.push(10, 10, 2 * MS, &mut out); // overtaken at the start
        assert!(out.is_empty(), "held until the first waited 20 ms");
        r.poll(19 * MS, &mut out);
        assert!(out.is_empty());
        r.poll(20 * MS, &mut out);
        assert_eq!(seqs_of(&out), vec![10, 11, 12]);
        // Started: in-order packets go straight through, later ones that
        // are behind are late.
        r.push(13, 13, 21 * MS, &mut out);
        assert_eq!(seqs_of(&out), vec![10, 11, 12, 13]);
        r.push(9, 9, 22 * MS, &mut out);
        assert_eq!(r.stats().late, 1);
        // A full buffer also starts the stream.
        let mut r = Reorder::new(4, u64::MAX);
        out.clear();
        for q in [5u16, 4, 6, 7] {
            r.push(q, q, 0, &mut out);
        }
        assert!(out.is_empty());
        r.push(8, 8, 0, &mut out);
        assert_eq!(seqs_of(&out), vec![4, 5, 6, 7, 8]);
    }

    /// A buffer that has started at `first` (released).
    fn started(cap: usize, delay: u64, first: u16, out: &mut Vec<Released<u16>>) -> Reorder<u16> {
        let mut r = Reorder::new(cap, delay);
        r.push(first, first, 0, out);
        r.poll(delay, out);
        assert_eq!(seqs_of(out), vec![first as i64]);
        out.clear();
        r
    }

    #[test]
    fn reorder_releases_in_order() {
        let mut out = Vec::new();
        let mut r = started(8, MS, 9, &mut out);
        for q in [10u16, 12, 11, 14, 13, 15] {
            r.push(q, q, MS, &mut out);
        }
        assert_eq!(seqs_of(&out), vec![10, 11, 12, 13, 14, 15]);
        assert_eq!(r.held(), 0);
        // Duplicate of a held one, and a late one.
        out.clear();
        r.push(17, 17, MS, &mut out);
        r.push(17, 17, MS, &mut out);
        r.push(12, 12, MS, &mut out);
        assert!(out.is_empty());
        let st = r.stats();
        assert_eq!((st.duplicates, st.late, st.gaps), (1, 1, 0));
        r.push(16, 16, MS, &mut out);
        assert_eq!(seqs_of(&out), vec![16, 17]);
    }

    #[test]
    fn reorder_gives_up_when_full() {
        let mut out = Vec::new();
        let mut r = started(4, u64::MAX, 0, &mut out);
        // 1 is lost; 2, 3, 4 wait; 5 does not fit (window 1..=4).
        for q in [2u16, 3, 4] {
            r.push(q, q, 0, &mut out);
        }
        assert!(out.is_empty());
        r.push(5, 5, 0, &mut out);
        assert_eq!(seqs_of(&out), vec![-1, 2, 3, 4, 5]);
        assert_eq!(out[0], Released::Gap { first: 1, count: 1 });
        // A big jump (within MAX_DROPOUT) gives up on everything before.
        out.clear();
        r.push(8, 8, 0, &mut out);
        r.push(100, 100, 0, &mut out);
        // The window is now 97..=100: 97, 98 and 99 may still come.
        assert_eq!(seqs_of(&out), vec![-2, 8, -88]);
        assert_eq!(
            out[2],
            Released::Gap {
                first: 9,
                count: 88
            }
        );
        assert_eq!(r.stats().lost, 1 + 2 + 88);
        // The late packet 1 is counted, not released.
        r.push(1, 1, 0, &mut out);
        assert_eq!(r.stats().late, 1);
        out.clear();
        for q in [98u16, 97, 99] {
            r.push(q, q, 0, &mut out);
        }
        assert_eq!(seqs_of(&out), vec![97, 98, 99, 100]);
    }

    #[test]
    fn reorder_time_limit() {
        let mut out = Vec::new();
        let mut r = started(32, 50 * MS, 0, &mut out);
        r.push(2, 2, 10 * MS, &mut out);
        r.push(3, 3, 20 * MS, &mut out);
        r.poll(59 * MS, &mut out);
        assert!(out.is_empty());
        r.poll(60 * MS, &mut out);
        assert_eq!(seqs_of(&out), vec![-1, 2, 3]);
        // A newer packet that waited too long also releases older ones
        // held behind an earlier gap.
        out.clear();
        r.push(6, 6, 100 * MS, &mut out); // 4, 5 missing
        r.push(9, 9, 110 * MS, &mut out); // 7, 8 missing
        r.push(5, 5, 140 * MS, &mut out);
        assert!(out.is_empty());
        r.poll(155 * MS, &mut out); // 6 waited 55 ms
        assert_eq!(seqs_of(&out), vec![-1, 5, 6]);
        r.push(10, 10, 170 * MS, &mut out); // push also polls: 9 waited 60 ms
        assert_eq!(seqs_of(&out), vec![-1, 5, 6, -2, 9, 10]);
    }

    #[test]
    fn reorder_wraps_and_restarts() {
        let mut out = Vec::new();
        let mut r = started(16, u64::MAX, 65532, &mut out);
        for q in [65533u16, 65535, 65534, 1, 0, 2] {
            r.push(q, q, 0, &mut out);
        }
        assert_eq!(seqs_of(&out), vec![65533, 65534, 65535, 0, 1, 2]);
        out.clear();
        // Restart far away: the first far packet is held on probation,
        // the next one confirms it.
        r.push(4, 4, 0, &mut out); // 3 missing, 4 held
        r.push(30_000, 30_000, 0, &mut out);
        assert!(out.is_empty());
        r.push(30_001, 30_001, 0, &mut out);
        // What was held goes out first (3 was never received).
        assert_eq!(seqs_of(&out), vec![-1, 4, 30_000, 30_001]);
        assert_eq!(r.stats().resets, 1);
        // A stray far packet is dropped.
        out.clear();
        r.push(5000, 5000, 0, &mut out);
        r.push(30_002, 30_002, 0, &mut out);
        assert_eq!(seqs_of(&out), vec![30_002]);
        assert_eq!(r.stats().late, 1);
        // flush reports gaps between held packets.
        out.clear();
        r.push(30_005, 30_005, 0, &mut out);
        r.push(30_004, 30_004, 0, &mut out);
        r.flush(&mut out);
        assert_eq!(seqs_of(&out), vec![-1, 30_004, 30_005]);
    }

    #[test]
    fn reorder_random_shuffle_releases_everything_once() {
        let mut rng = Rng::new(99);
        let mut r = Reorder::new(32, u64::MAX);
        let mut out = Vec::new();
        let mut seqs: Vec<u16> = (0..5000u32).map(|i| (i + 60_000) as u16).collect();
        // Shuffle within blocks of 8 (the first block too: the start waits),
        // so no packet is displaced by 32 or more.
        for block in seqs.chunks_mut(8) {
            for i in (1..block.len()).rev() {
                let j = rng.range(0, i);
                block.swap(i, j);
            }
        }
        let mut rng2 = Rng::new(100);
        for &q in &seqs {
            r.push(q, q, 0, &mut out);
            // Sprinkle duplicates.
            if rng2.range(0, 10) == 0 {
                r.push(q, q, 0, &mut out);
            }
        }
        r.flush(&mut out);
        let got = seqs_of(&out);
        let want: Vec<i64> = (0..5000u32).map(|i| ((i + 60_000) as u16) as i64).collect();
        assert!(got == want, "released out of order or with gaps");
        let st = r.stats();
        assert_eq!((st.released, st.gaps, st.lost), (5000, 0, 0));
        assert!(st.duplicates + st.late > 400);
    }
}
