//! RTP (RFC 3550) header rules, written so that the XDP program and the
//! userspace receive path apply exactly the same checks. The kernel side
//! reads the bytes it needs with bounds-checked packet pointers and calls
//! these functions with plain values.

/// Length of the fixed RTP header.
pub const FIXED_LEN: usize = 12;

/// The fields of an RTP header that statistics use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtpHeader {
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_type: u8,
    pub marker: bool,
}

/// Why a UDP payload is not RTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpError {
    TooShort,
    Version,
    /// CSRC list or extension header runs past the packet.
    HeaderLength,
    /// Padding count zero or larger than the payload.
    Padding,
}

/// Decodes the fixed header from its 12 bytes and checks the version.
#[inline(always)]
pub fn parse_fixed(b: &[u8; FIXED_LEN]) -> Result<RtpHeader, RtpError> {
    if b[0] >> 6 != 2 {
        return Err(RtpError::Version);
    }
    Ok(RtpHeader {
        seq: u16::from_be_bytes([b[2], b[3]]),
        timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload_type: b[1] & 0x7f,
        marker: b[1] & 0x80 != 0,
    })
}

/// Offset of the extension header (or of the payload when there is none):
/// the fixed header plus the CSRC list.
#[inline(always)]
pub fn csrc_end(b0: u8) -> usize {
    FIXED_LEN + 4 * (b0 & 0x0f) as usize
}

#[inline(always)]
pub fn has_extension(b0: u8) -> bool {
    b0 & 0x10 != 0
}

#[inline(always)]
pub fn has_padding(b0: u8) -> bool {
    b0 & 0x20 != 0
}

/// Checks the header length against the packet length `len` (the whole RTP
/// packet): `ext_words` is the extension's length field (in 32-bit words) when
/// the X bit is set, `pad` the last byte of the packet when the P bit is set.
/// Returns the payload length.
#[inline(always)]
pub fn check_lengths(
    b0: u8,
    len: usize,
    ext_words: Option<u16>,
    pad: Option<u8>,
) -> Result<usize, RtpError> {
    let mut header = csrc_end(b0);
    if has_extension(b0) {
        match ext_words {
            Some(w) => header += 4 + 4 * w as usize,
            None => return Err(RtpError::HeaderLength),
        }
    }
    if header > len {
        return Err(RtpError::HeaderLength);
    }
    let mut payload = len - header;
    if has_padding(b0) {
        match pad {
            Some(p) if p != 0 && (p as usize) <= payload => payload -= p as usize,
            _ => return Err(RtpError::Padding),
        }
    }
    Ok(payload)
}

/// Full validation of an RTP packet held in a slice (userspace receive path
/// and tests). Returns the header and the payload range.
pub fn parse(pkt: &[u8]) -> Result<(RtpHeader, core::ops::Range<usize>), RtpError> {
    let fixed: &[u8; FIXED_LEN] = pkt
        .get(..FIXED_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(RtpError::TooShort)?;
    let hdr = parse_fixed(fixed)?;
    let b0 = pkt[0];
    let ce = csrc_end(b0);
    let ext_words = if has_extension(b0) {
        pkt.get(ce + 2..ce + 4)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
    } else {
        None
    };
    let pad = if has_padding(b0) {
        pkt.last().copied()
    } else {
        None
    };
    let payload_len = check_lengths(b0, pkt.len(), ext_words, pad)?;
    let start = pkt.len()
        - payload_len
        - if has_padding(b0) {
            pad.unwrap_or(0) as usize
        } else {
            0
        };
    Ok((hdr, start..start + payload_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(b0: u8, extra: &[u8], payload: &[u8]) -> [u8; 64] {
        let mut p = [0u8; 64];
        p[0] = b0;
        p[1] = 0x80 | 96;
        p[2..4].copy_from_slice(&1234u16.to_be_bytes());
        p[4..8].copy_from_slice(&90000u32.to_be_bytes());
        p[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        p[12..12 + extra.len()].copy_from_slice(extra);
        p[12 + extra.len()..12 + extra.len() + payload.len()].copy_from_slice(payload);
        p
    }

    #[test]
    fn plain_header() {
        let p = pkt(0x80, &[], &[1, 2, 3]);
        let (h, r) = parse(&p[..15]).unwrap();
        assert_eq!(h.seq, 1234);
        assert_eq!(h.timestamp, 90000);
        assert_eq!(h.ssrc, 0xdead_beef);
        assert_eq!(h.payload_type, 96);
        assert!(h.marker);
        assert_eq!(r, 12..15);
    }

    #[test]
    fn csrc_extension_padding() {
        // 2 CSRCs, extension of 1 word, 2 bytes payload, 3 bytes padding.
        let extra = [0, 0, 0, 1, 0, 0, 0, 2, 0xbe, 0xde, 0, 1, 9, 9, 9, 9];
        let mut p = pkt(0x80 | 0x20 | 0x10 | 2, &extra, &[7, 7, 0, 0, 3]);
        let len = 12 + extra.len() + 5;
        let (_, r) = parse(&p[..len]).unwrap();
        assert_eq!(r, 28..30);
        // Padding count larger than what is left.
        p[len - 1] = 6;
        assert_eq!(parse(&p[..len]), Err(RtpError::Padding));
        p[len - 1] = 0;
        assert_eq!(parse(&p[..len]), Err(RtpError::Padding));
    }

    #[test]
    fn bad_version_and_lengths() {
        assert_eq!(parse(&pkt(0x40, &[], &[])[..12]), Err(RtpError::Version));
        assert_eq!(parse(&[0x80; 11]), Err(RtpError::TooShort));
        // 3 CSRCs announced, only 2 present.
        assert_eq!(
            parse(&pkt(0x83, &[], &[])[..20]),
            Err(RtpError::HeaderLength)
        );
        // Extension header cut off.
        assert_eq!(
            parse(&pkt(0x90, &[], &[])[..14]),
            Err(RtpError::HeaderLength)
        );
        // Extension length past the end.
        assert_eq!(
            parse(&pkt(0x90, &[0, 0, 0, 5], &[])[..20]),
            Err(RtpError::HeaderLength)
        );
    }
}
