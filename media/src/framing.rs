//! RTP over TCP: RFC 4571 framing (a 2-byte big-endian length before each
//! packet) and, auto-detected per packet, RTSP-style interleaved framing
//! (`$`, a channel byte, a 2-byte length).

use thiserror::Error;

/// The largest length a 2-byte prefix can express.
pub const DEFAULT_MAX_LEN: usize = 65535;

/// Framing errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum FramingError {
    /// A length above the limit (decoding) or above 65535 (encoding). A
    /// decoder that returned it stays failed: close the connection.
    #[error("packet length {0} exceeds the limit")]
    TooLong(usize),
}

/// Splits a TCP byte stream into RTP (or RTCP) packets.
///
/// Each packet is either RFC 4571 (`len_hi len_lo packet`) or interleaved
/// (`0x24 channel len_hi len_lo packet`), decided per packet by its first
/// byte being `$` (0x24). As a consequence an RFC 4571 length of
/// 0x2400..=0x24FF is read as interleaved framing; such packets (over 9 KiB)
/// do not occur in GB28181 media. Zero-length packets are skipped.
#[derive(Debug)]
pub struct Rfc4571Decoder {
    max_len: usize,
    buf: Vec<u8>,
    pos: usize,
    failed: Option<usize>,
    channel: Option<u8>,
}

impl Default for Rfc4571Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Rfc4571Decoder {
    /// A decoder accepting packets up to 65535 bytes.
    pub fn new() -> Self {
        Self::with_max_len(DEFAULT_MAX_LEN)
    }

    /// A decoder accepting packets up to `max_len` bytes (at most 65535).
    pub fn with_max_len(max_len: usize) -> Self {
        Rfc4571Decoder {
            max_len: max_len.min(DEFAULT_MAX_LEN),
            buf: Vec::new(),
            pos: 0,
            failed: None,
            channel: None,
        }
    }

    /// Appends bytes read from the connection. Data pushed after an error
    /// is discarded.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= 4096 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete packet, `None` when more bytes are needed.
    pub fn next_packet(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        if let Some(len) = self.failed {
            return Err(FramingError::TooLong(len));
        }
        loop {
            let rest = &self.buf[self.pos..];
            let (header, len, channel) = match rest {
                [0x24, ch, hi, lo, ..] => (4, u16::from_be_bytes([*hi, *lo]) as usize, Some(*ch)),
                [0x24, ..] => return Ok(None),
                [hi, lo, ..] => (2, u16::from_be_bytes([*hi, *lo]) as usize, None),
                _ => return Ok(None),
            };
            if len > self.max_len {
                self.failed = Some(len);
                self.buf = Vec::new();
                self.pos = 0;
                return Err(FramingError::TooLong(len));
            }
            if rest.len() < header + len {
                return Ok(None);
            }
            let pkt = rest[header..header + len].to_vec();
            self.pos += header + len;
            if len == 0 {
                continue;
            }
            self.channel = channel;
            return Ok(Some(pkt));
        }
    }

    /// The interleaved channel of the last packet returned, `None` when it
    /// was RFC 4571 framed.
    pub fn last_channel(&self) -> Option<u8> {
        self.channel
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Appends `pkt` with its RFC 4571 length prefix to `out`.
pub fn encode_rfc4571(pkt: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    let len = u16::try_from(pkt.len()).map_err(|_| FramingError::TooLong(pkt.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(pkt);
    Ok(())
}

/// Appends `pkt` with RTSP interleaved framing (`$`, channel, length).
pub fn encode_interleaved(channel: u8, pkt: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    let len = u16::try_from(pkt.len()).map_err(|_| FramingError::TooLong(pkt.len()))?;
    out.extend_from_slice(&[0x24, channel]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(pkt);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// Packets with their interleaved channel.
    type Packets = Vec<(Option<u8>, Vec<u8>)>;

    fn drain(d: &mut Rfc4571Decoder) -> Packets {
        let mut v = Vec::new();
        while let Some(p) = d.next_packet().unwrap() {
            v.push((d.last_channel(), p));
        }
        v
    }

    fn sample() -> (Vec<u8>, Packets) {
        let mut rng = Rng::new(3);
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for i in 0..12 {
            let n = [1, 12, 100, 1400, 3][i % 5];
            let mut p = rng.bytes(n);
            p[0] = 0x80;
            if i % 3 == 2 {
                encode_interleaved((i % 2) as u8, &p, &mut stream).unwrap();
                want.push((Some((i % 2) as u8), p));
            } else {
                encode_rfc4571(&p, &mut stream).unwrap();
                want.push((None, p));
            }
            if i == 4 {
                stream.extend_from_slice(&[0, 0]); // zero length: skipped
                stream.extend_from_slice(&[0x24, 1, 0, 0]);
            }
        }
        (stream, want)
    }

    #[test]
    fn whole_stream() {
        let (stream, want) = sample();
        let mut d = Rfc4571Decoder::new();
        d.push(&stream);
        assert_eq!(drain(&mut d), want);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let (stream, want) = sample();
        for cut in 0..=stream.len() {
            let mut d = Rfc4571Decoder::new();
            d.push(&stream[..cut]);
            let mut got = drain(&mut d);
            d.push(&stream[cut..]);
            got.extend(drain(&mut d));
            assert_eq!(got, want, "cut at {cut}");
        }
        // And one byte at a time.
        let mut d = Rfc4571Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            got.extend(drain(&mut d));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn random_splits() {
        let (stream, want) = sample();
        let mut rng = Rng::new(11);
        for _ in 0..200 {
            let mut d = Rfc4571Decoder::new();
            let mut got = Vec::new();
            let mut i = 0;
            while i < stream.len() {
                let n = rng.range(1, 3000).min(stream.len() - i);
                d.push(&stream[i..i + n]);
                i += n;
                got.extend(drain(&mut d));
            }
            assert_eq!(got, want);
        }
    }

    #[test]
    fn too_long_fails_for_good() {
        let mut d = Rfc4571Decoder::with_max_len(8192);
        let mut s = Vec::new();
        encode_rfc4571(&[0x80; 100], &mut s).unwrap();
        s.extend_from_slice(&[0x20, 0x01]); // 8193
        d.push(&s);
        assert_eq!(d.next_packet().unwrap().map(|p| p.len()), Some(100));
        assert_eq!(d.next_packet(), Err(FramingError::TooLong(8193)));
        d.push(&[0, 1, 0x80]);
        assert_eq!(d.next_packet(), Err(FramingError::TooLong(8193)));
        // Interleaved length is checked too.
        let mut d = Rfc4571Decoder::with_max_len(8192);
        d.push(&[0x24, 0, 0xFF, 0xFF]);
        assert_eq!(d.next_packet(), Err(FramingError::TooLong(65535)));
        // Exactly the limit is fine.
        let mut d = Rfc4571Decoder::with_max_len(8192);
        let mut s = Vec::new();
        encode_rfc4571(&[7; 8192], &mut s).unwrap();
        d.push(&s);
        assert_eq!(d.next_packet().unwrap().map(|p| p.len()), Some(8192));
    }

    #[test]
    fn zero_length_only() {
        let mut d = Rfc4571Decoder::new();
        d.push(&[0, 0, 0, 0, 0x24, 9, 0, 0, 0]);
        assert_eq!(d.next_packet(), Ok(None));
        assert_eq!(d.buffered(), 1);
        d.push(&[1, 0xAA]);
        assert_eq!(d.next_packet(), Ok(Some(vec![0xAA])));
        assert_eq!(d.last_channel(), None);
    }

    #[test]
    fn encode_rejects_oversized() {
        let mut out = Vec::new();
        assert_eq!(
            encode_rfc4571(&vec![0; 65536], &mut out),
            Err(FramingError::TooLong(65536))
        );
        assert!(out.is_empty());
        encode_rfc4571(&vec![1; 65535], &mut out).unwrap();
        assert_eq!(&out[..2], &[0xFF, 0xFF]);
    }
}
