//! Profile `sm4-nal-ofb`: SM4-OFB over the RBSP of H.264/H.265 VCL NAL units
//! in Annex-B access units (start codes `00 00 01` or `00 00 00 01`).
//!
//! Encoder side ([`encrypt_access_unit`]): every VCL NAL unit (H.264 types
//! 1-5, H.265 0-31) of the access unit is encrypted: header kept, emulation
//! prevention removed, RBSP bytes `[0, len-1)` XORed with the SM4-OFB
//! keystream of IV `iv_base XOR (0, 0, 0, BE32(i))` for the i-th VCL NAL
//! unit, emulation prevention re-applied. The security parameters travel in a
//! `user_data_unregistered` SEI (UUID [`SEI_UUID`], 24-byte body: version 1,
//! flags, reserved, BE32 key_version, iv_base) inserted with a 4-byte start
//! code right before the first VCL NAL unit. Everything else is kept byte
//! for byte.
//!
//! Decoder side ([`NalDecryptor`]): per access unit, find our SEI, look up
//! the key, decrypt, remove our SEI and its start code; the output equals the
//! encoder's input byte for byte. Failed access units are counted by
//! [`Failure`] and never emitted.
//!
//! # Emulation prevention and exact round trips
//! The round trip is exact when the input NAL units carry canonical
//! emulation prevention (an `03` inserted exactly after each `00 00` that is
//! followed by `00`..`03`, and after a final `00 00`), which every conforming
//! encoder produces. A NAL unit with non-canonical `03` bytes (for example
//! `00 00 03 41`) is decrypted to its canonical form, so it may differ from
//! the original in those bytes. A VCL NAL unit whose RBSP ends in `00` (only
//! with trailing `cabac_zero_word`s) is not representable: its encrypted form
//! may end in a single `00`, which Annex B cannot carry; such NAL units do not
//! round trip (the wrong-key check then usually drops the access unit).
//!
//! # Wrong-key detection is a plausibility check
//! OFB has no integrity protection: decrypting with a wrong key silently
//! produces garbage. [`NalDecryptor`] therefore checks the first fields of
//! every decrypted slice header (H.264: `first_mb_in_slice` = 0 for the first
//! slice of the picture, `slice_type` <= 9 and an I/SI type in IDR pictures,
//! `pic_parameter_set_id` among the PPS ids seen in clear; H.265:
//! `first_slice_segment_in_pic_flag` = 1 for the first segment,
//! `slice_pic_parameter_set_id` <= 63 and seen, `slice_type` <= 2 and I in
//! IRAP pictures when the PPS is known). With a single PPS in the stream a
//! wrong key passes one slice with a probability of roughly 1/4 (P/B
//! slices) down to 1/25 (IDR), four access units in a row with well under
//! 1 %; several slices per picture make it rarer still. It is a heuristic
//! against misconfigured keys, NOT an authentication: anyone who can modify
//! the stream can forge content.
//!
//! A new key id starts Unverified: its decrypted access units are held (at
//! most [`HOLD_MAX`]) until [`VERIFY_AUS`] of them passed, then it is Good
//! and they are released in order. An implausible access unit under an
//! Unverified key makes the key Bad: the held ones are discarded and every
//! later access unit under that key id is dropped (counted `WrongKey`).
//! Under a Good key an implausible access unit is dropped without latching.

use std::collections::VecDeque;

use crate::sm4::Sm4;
use crate::Failure;

/// Video codec of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NalCodec {
    H264,
    H265,
}

impl NalCodec {
    /// NAL unit header length in bytes.
    pub fn header_len(self) -> usize {
        match self {
            NalCodec::H264 => 1,
            NalCodec::H265 => 2,
        }
    }

    /// nal_unit_type of a NAL unit (None when shorter than its header).
    pub fn nal_type(self, nal: &[u8]) -> Option<u8> {
        if nal.len() < self.header_len() {
            return None;
        }
        let b = *nal.first()?;
        Some(match self {
            NalCodec::H264 => b & 0x1f,
            NalCodec::H265 => (b >> 1) & 0x3f,
        })
    }
}

/// UUID of the security SEI message: 96c62db2-5bb7-4383-b4f3-fcb18933ab08.
pub const SEI_UUID: [u8; 16] = [
    0x96, 0xc6, 0x2d, 0xb2, 0x5b, 0xb7, 0x43, 0x83, 0xb4, 0xf3, 0xfc, 0xb1, 0x89, 0x33, 0xab, 0x08,
];
/// Format version carried in the first body byte.
pub const SEI_FORMAT_VERSION: u8 = 1;
/// SEI payloadType of user_data_unregistered.
const SEI_USER_DATA_UNREGISTERED: u32 = 5;
/// UUID + 24-byte body.
const SEI_PAYLOAD_SIZE: usize = 40;
const H264_SEI: u8 = 6;
const H264_PPS: u8 = 8;
const H265_PPS: u8 = 34;
const H265_PREFIX_SEI: u8 = 39;

/// Security parameters of one access unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecurityParams {
    pub encrypted: bool,
    pub key_version: u32,
    pub iv_base: [u8; 16],
}

/// VCL NAL unit: H.264 types 1-5, H.265 types 0-31.
pub fn is_vcl(codec: NalCodec, nal: &[u8]) -> bool {
    match (codec, codec.nal_type(nal)) {
        (NalCodec::H264, Some(t)) => (1..=5).contains(&t),
        (NalCodec::H265, Some(t)) => t <= 31,
        (_, None) => false,
    }
}

fn is_prefix_sei(codec: NalCodec, nal: &[u8]) -> bool {
    match codec {
        NalCodec::H264 => codec.nal_type(nal) == Some(H264_SEI),
        NalCodec::H265 => codec.nal_type(nal) == Some(H265_PREFIX_SEI),
    }
}

// ---------------------------------------------------------------------------
// Emulation prevention

/// Appends `rbsp` to `out` with emulation prevention: `03` after every
/// `00 00` followed by a byte <= `03`, and after a final `00 00`.
fn escape_into(rbsp: &[u8], out: &mut Vec<u8>) {
    let mut zeros = 0u32;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    if zeros >= 2 {
        out.push(3);
    }
}

/// Appends the RBSP of an escaped NAL payload to `out` (every `03` after `00 00` removed).
fn unescape_into(payload: &[u8], out: &mut Vec<u8>) {
    let mut zeros = 0u32;
    for &b in payload {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
}

/// Length of the RBSP of an escaped NAL payload.
#[cfg(test)]
fn rbsp_len(payload: &[u8]) -> usize {
    let mut zeros = 0u32;
    let mut n = 0usize;
    for &b in payload {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        n += 1;
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    n
}

/// Position of the next emulation prevention byte at or after `from`: a
/// `03` preceded by two zero bytes. (Equivalent to the stateful scan of
/// [`unescape_into`]: the two zeros are RBSP bytes, and only a nonzero byte
/// resets the count.)
fn next_ep(payload: &[u8], from: usize) -> Option<usize> {
    let mut i = from.max(2);
    loop {
        let rel = payload.get(i..)?.iter().position(|&b| b == 3)?;
        let p = i + rel;
        if payload.get(p - 2) == Some(&0) && payload.get(p - 1) == Some(&0) {
            return Some(p);
        }
        i = p + 1;
    }
}

/// Does this RBSP need emulation prevention (`00 00` followed by a byte <= 3, or a final `00 00`)?
fn needs_escape(rbsp: &[u8]) -> bool {
    let mut i = 0usize;
    while let Some(rel) = rbsp.get(i..).and_then(|r| r.iter().position(|&b| b == 0)) {
        let p = i + rel;
        if rbsp.get(p + 1) == Some(&0) {
            match rbsp.get(p + 2) {
                None => return true,
                Some(&x) if x <= 3 => return true,
                _ => {}
            }
        }
        i = p + 1;
    }
    false
}

/// Appends the RBSP of an escaped payload: bulk copies between the
/// emulation prevention bytes (same result as [`unescape_into`]).
fn unescape_bulk(payload: &[u8], out: &mut Vec<u8>) {
    let mut last = 0usize;
    let mut from = 0usize;
    while let Some(p) = next_ep(payload, from) {
        out.extend_from_slice(payload.get(last..p).unwrap_or_default());
        last = p + 1;
        from = p + 1;
    }
    out.extend_from_slice(payload.get(last..).unwrap_or_default());
}

/// One escaped NAL payload through unescape -> OFB XOR of RBSP `[0, len-1)`
/// -> escape, appended to `out`. Bulk copies and a bulk XOR; the byte-wise
/// escape only runs when the ciphertext needs emulation prevention.
fn crypt_payload(payload: &[u8], c: &Sm4, iv: &[u8; 16], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(payload.len() + 8);
    unescape_bulk(payload, out);
    let n = out.len() - start;
    if n < 2 {
        out.truncate(start);
        out.extend_from_slice(payload);
        return;
    }
    if let Some(rbsp) = out.get_mut(start..start + n - 1) {
        crate::sm4::ofb_apply(c, iv, rbsp);
    }
    if needs_escape(out.get(start..).unwrap_or_default()) {
        let rbsp = out.split_off(start);
        escape_into(&rbsp, out);
    }
}

/// A VCL NAL unit of an access unit being en/decrypted in lanes: where it
/// sits in the output (header at `start`, unescaped payload up to `end`)
/// and its OFB IV. Units whose RBSP is shorter than 2 bytes are not pieces.
#[derive(Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
    iv: [u8; 16],
}

/// Appends a NAL unit with its payload unescaped (RBSP), to be XORed by
/// [`crypt_pieces`]; returns the piece, or None (the NAL unit appended
/// unchanged) when its RBSP is shorter than 2 bytes.
fn push_unescaped(codec: NalCodec, nal: &[u8], iv: [u8; 16], out: &mut Vec<u8>) -> Option<Piece> {
    let h = codec.header_len();
    let (Some(header), Some(payload)) = (nal.get(..h), nal.get(h..)) else {
        out.extend_from_slice(nal);
        return None;
    };
    let start = out.len();
    out.extend_from_slice(header);
    unescape_bulk(payload, out);
    if out.len() - start - h < 2 {
        out.truncate(start);
        out.extend_from_slice(nal);
        return None;
    }
    Some(Piece {
        start,
        end: out.len(),
        iv,
    })
}

/// XORs the OFB keystream into RBSP `[0, len-1)` of every piece, all pieces
/// in parallel lanes of the block function, then re-inserts emulation
/// prevention where the result needs it (moving what follows; the pieces'
/// ranges are updated).
fn crypt_pieces(codec: NalCodec, c: &Sm4, out: &mut Vec<u8>, pieces: &mut [Piece]) {
    if pieces.is_empty() {
        return;
    }
    let h = codec.header_len();
    {
        let mut units = Vec::with_capacity(pieces.len());
        let mut rest: &mut [u8] = out.as_mut_slice();
        let mut base = 0usize;
        for p in pieces.iter() {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(p.start + h - base);
            let (rbsp, tail) = tail.split_at_mut(p.end - 1 - (p.start + h));
            units.push(crate::sm4::OfbUnit {
                iv: p.iv,
                data: rbsp,
            });
            rest = tail;
            base = p.end - 1;
        }
        c.ofb_lanes(&mut units);
    }
    let escape: Vec<bool> = pieces
        .iter()
        .map(|p| needs_escape(out.get(p.start + h..p.end).unwrap_or_default()))
        .collect();
    if !escape.contains(&true) {
        return;
    }
    let old = std::mem::take(out);
    out.reserve(old.len() + 64);
    let mut copied = 0usize;
    for (p, esc) in pieces.iter_mut().zip(escape) {
        let (start, end) = (p.start, p.end);
        out.extend_from_slice(old.get(copied..start + h).unwrap_or_default());
        p.start = out.len() - h;
        if esc {
            escape_into(old.get(start + h..end).unwrap_or_default(), out);
        } else {
            out.extend_from_slice(old.get(start + h..end).unwrap_or_default());
        }
        p.end = out.len();
        copied = end;
    }
    out.extend_from_slice(old.get(copied..).unwrap_or_default());
}

// ---------------------------------------------------------------------------
// Annex B

/// One NAL unit of an Annex-B string: `gap_start..nal_start` is what lies
/// between the previous NAL unit and this one (trailing zeros, zero_byte,
/// the `00 00 01` start code, or leading bytes before the first start code),
/// `nal_start..nal_end` the NAL unit (trailing zero bytes belong to the
/// next gap, as a NAL unit never ends in `00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unit {
    gap_start: usize,
    nal_start: usize,
    nal_end: usize,
}

/// Splits `au`; returns where the bytes after the last NAL unit begin.
fn split_annexb(au: &[u8], units: &mut Vec<Unit>) -> usize {
    units.clear();
    let n = au.len();
    let mut starts_prev: Option<usize> = None; // nal_start of the unit being scanned
    let mut gap_start = 0usize;
    let mut i = 0usize;
    let close = |nal_start: usize, sc_pos: usize, gap_start: &mut usize, units: &mut Vec<Unit>| {
        let mut end = sc_pos;
        while end > nal_start && au.get(end - 1) == Some(&0) {
            end -= 1;
        }
        units.push(Unit {
            gap_start: *gap_start,
            nal_start,
            nal_end: end,
        });
        *gap_start = end;
    };
    while i + 2 < n {
        let b2 = au.get(i + 2).copied().unwrap_or(0xff);
        if b2 > 1 {
            i += 3;
        } else if b2 == 1 {
            if au.get(i) == Some(&0) && au.get(i + 1) == Some(&0) {
                if let Some(s) = starts_prev {
                    close(s, i, &mut gap_start, units);
                }
                starts_prev = Some(i + 3);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    if let Some(s) = starts_prev {
        close(s, n, &mut gap_start, units);
        gap_start
    } else {
        n
    }
}

fn slice(au: &[u8], a: usize, b: usize) -> &[u8] {
    au.get(a..b).unwrap_or_default()
}

/// The NAL units of an Annex-B byte string, without start codes (and
/// without the trailing zero bytes that belong to the next start code).
pub fn split_nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut units = Vec::new();
    split_annexb(data, &mut units);
    units
        .iter()
        .map(|u| slice(data, u.nal_start, u.nal_end))
        .collect()
}

/// Splits an Annex-B elementary stream into access units, byte for byte
/// (the concatenation of the result is `stream`). A new access unit starts
/// at an access unit delimiter, at a parameter set or prefix SEI that
/// follows a VCL NAL unit, or at a VCL NAL unit that starts a new picture
/// (H.264 `first_mb_in_slice` = 0, H.265 `first_slice_segment_in_pic_flag`
/// = 1) when the current access unit already has one. Each access unit
/// begins with its first start code (including a 4-byte start code's zero byte).
pub fn split_access_units(codec: NalCodec, stream: &[u8]) -> Vec<&[u8]> {
    let mut units = Vec::new();
    split_annexb(stream, &mut units);
    let mut aus = Vec::new();
    let mut au_start = 0usize;
    let mut has_vcl = false;
    for u in &units {
        let gap = slice(stream, u.gap_start, u.nal_start);
        let nal = slice(stream, u.nal_start, u.nal_end);
        let t = codec.nal_type(nal);
        let starts_au = match (codec, t) {
            (_, None) => false,
            (NalCodec::H264, Some(9)) | (NalCodec::H265, Some(35)) => true,
            (NalCodec::H264, Some(6..=8)) | (NalCodec::H265, Some(32..=34 | 39)) => has_vcl,
            _ if is_vcl(codec, nal) => has_vcl && first_slice_of_picture(codec, nal),
            _ => false,
        };
        let sc_start = u.nal_start - start_code_len(gap);
        if starts_au && sc_start > au_start {
            aus.push(slice(stream, au_start, sc_start));
            au_start = sc_start;
            has_vcl = false;
        }
        if is_vcl(codec, nal) {
            has_vcl = true;
        }
    }
    if au_start < stream.len() {
        aus.push(slice(stream, au_start, stream.len()));
    }
    aus
}

/// H.264: first_mb_in_slice == 0; H.265: first_slice_segment_in_pic_flag == 1.
fn first_slice_of_picture(codec: NalCodec, nal: &[u8]) -> bool {
    let mut r = BitReader::new(nal.get(codec.header_len()..).unwrap_or_default());
    match codec {
        NalCodec::H264 => r.ue() == Some(0),
        NalCodec::H265 => r.bit() == Some(1),
    }
}

// ---------------------------------------------------------------------------
// SEI

/// A complete SEI NAL unit (NAL header, payloadType 5, payloadSize 40, UUID,
/// the 24 bytes, rbsp trailing bits), emulation prevention applied. No start code.
pub fn build_sei_nal(codec: NalCodec, p: &SecurityParams) -> Vec<u8> {
    let mut rbsp = [0u8; 2 + SEI_PAYLOAD_SIZE + 1];
    rbsp[0] = SEI_USER_DATA_UNREGISTERED as u8;
    rbsp[1] = SEI_PAYLOAD_SIZE as u8;
    rbsp[2..18].copy_from_slice(&SEI_UUID);
    rbsp[18] = SEI_FORMAT_VERSION;
    rbsp[19] = u8::from(p.encrypted);
    // 20..22 reserved, zero
    rbsp[22..26].copy_from_slice(&p.key_version.to_be_bytes());
    rbsp[26..42].copy_from_slice(&p.iv_base);
    rbsp[42] = 0x80;
    let mut out = Vec::with_capacity(2 + rbsp.len() + 8);
    match codec {
        NalCodec::H264 => out.push(H264_SEI),
        NalCodec::H265 => out.extend_from_slice(&[H265_PREFIX_SEI << 1, 0x01]),
    }
    escape_into(&rbsp, &mut out);
    out
}

/// Reads an SEI payloadType/payloadSize value (0xFF continuation bytes).
fn read_ff_coded(rbsp: &[u8], pos: &mut usize) -> Option<usize> {
    let mut v = 0usize;
    loop {
        let b = *rbsp.get(*pos)?;
        *pos += 1;
        v = v.checked_add(usize::from(b))?;
        if b != 0xff {
            return Some(v);
        }
    }
}

/// Parses our security message out of an SEI NAL unit.
///
/// `Ok(None)`: not a prefix SEI NAL unit, or an SEI without our UUID message
/// (a damaged foreign SEI included). `Err(Failure::Malformed)`: our UUID with
/// a wrong payload size, unknown format version, nonzero flag or reserved
/// bits, two of our messages, or SEI syntax truncated inside or after our
/// message. All SEI messages of the NAL unit are walked.
pub fn parse_sei_nal(codec: NalCodec, nal: &[u8]) -> Result<Option<SecurityParams>, Failure> {
    if !is_prefix_sei(codec, nal) {
        return Ok(None);
    }
    let mut rbsp = Vec::with_capacity(nal.len());
    unescape_into(nal.get(codec.header_len()..).unwrap_or_default(), &mut rbsp);
    let mut found: Option<SecurityParams> = None;
    let mut pos = 0usize;
    // A truncated message: ours (or after ours) is Malformed, a foreign one ends the walk.
    let truncated = |found: &Option<SecurityParams>, ptype: Option<usize>, avail: &[u8]| {
        let looks_ours = ptype == Some(SEI_USER_DATA_UNREGISTERED as usize)
            && !avail.is_empty()
            && SEI_UUID.starts_with(avail.get(..avail.len().min(16)).unwrap_or_default());
        if found.is_some() || looks_ours {
            Err(Failure::Malformed)
        } else {
            Ok(None)
        }
    };
    loop {
        let rest = rbsp.get(pos..).unwrap_or_default();
        // more_rbsp_data(): stop at the rbsp_trailing_bits (or a missing one).
        match rest.split_first() {
            None => break,
            Some((&0x80, tail)) if tail.iter().all(|&b| b == 0) => break,
            _ => {}
        }
        let Some(ptype) = read_ff_coded(&rbsp, &mut pos) else {
            return truncated(&found, None, &[]);
        };
        let Some(size) = read_ff_coded(&rbsp, &mut pos) else {
            return truncated(&found, Some(ptype), &[]);
        };
        let avail = rbsp.get(pos..).unwrap_or_default();
        let Some(body) = pos.checked_add(size).and_then(|end| rbsp.get(pos..end)) else {
            return truncated(&found, Some(ptype), avail);
        };
        pos += size;
        if ptype != SEI_USER_DATA_UNREGISTERED as usize {
            continue;
        }
        let ours = if size >= 16 {
            body.get(..16) == Some(&SEI_UUID[..])
        } else {
            // a shortened payload that is a prefix of our UUID: tampered
            size > 0 && SEI_UUID.starts_with(body)
        };
        if !ours {
            continue;
        }
        if found.is_some() || size != SEI_PAYLOAD_SIZE {
            return Err(Failure::Malformed);
        }
        let f = body.get(16..40).ok_or(Failure::Malformed)?;
        let (version, flags, reserved) = (f[0], f[1], [f[2], f[3]]);
        if version != SEI_FORMAT_VERSION || flags & !1 != 0 || reserved != [0, 0] {
            return Err(Failure::Malformed);
        }
        let mut iv_base = [0u8; 16];
        iv_base.copy_from_slice(&f[8..24]);
        found = Some(SecurityParams {
            encrypted: flags & 1 != 0,
            key_version: u32::from_be_bytes([f[4], f[5], f[6], f[7]]),
            iv_base,
        });
    }
    Ok(found)
}

// ---------------------------------------------------------------------------
// Encryption

/// OFB IV of the i-th encrypted NAL unit: `iv_base XOR (0, 0, 0, BE32(i))`.
pub fn nal_iv(iv_base: &[u8; 16], i: u32) -> [u8; 16] {
    let mut iv = *iv_base;
    for (d, s) in iv[12..16].iter_mut().zip(i.to_be_bytes()) {
        *d ^= s;
    }
    iv
}

/// Encrypts or decrypts (same operation) one NAL unit (no start code): the
/// header and the re-emulation-prevented payload are appended to `out`.
/// A NAL unit whose RBSP is shorter than 2 bytes is copied unchanged. Works
/// on any NAL unit; choosing the VCL ones is the caller's business.
pub fn crypt_nal(codec: NalCodec, nal: &[u8], c: &Sm4, iv: &[u8; 16], out: &mut Vec<u8>) {
    let h = codec.header_len();
    match (nal.get(..h), nal.get(h..)) {
        (Some(header), Some(payload)) => {
            out.extend_from_slice(header);
            crypt_payload(payload, c, iv, out);
        }
        _ => out.extend_from_slice(nal),
    }
}

/// Length of the start code at the end of a gap (`00 00 00 01` -> 4, else 3).
fn start_code_len(gap: &[u8]) -> usize {
    if gap.ends_with(&[0, 0, 0, 1]) {
        4
    } else {
        3.min(gap.len())
    }
}

/// Encoder side: inserts the SEI (with a 4-byte start code) right before the
/// first VCL NAL unit and encrypts every VCL NAL unit (index i = 0, 1, .. in
/// access unit order). Every original start code and non-VCL NAL unit is
/// kept byte for byte. An access unit without VCL NAL units is returned
/// unchanged. `iv_base` must be fresh and random for every access unit.
pub fn encrypt_access_unit(
    codec: NalCodec,
    au: &[u8],
    key_version: u32,
    c: &Sm4,
    iv_base: &[u8; 16],
) -> Vec<u8> {
    let mut units = Vec::new();
    let tail = split_annexb(au, &mut units);
    if !units
        .iter()
        .any(|u| is_vcl(codec, slice(au, u.nal_start, u.nal_end)))
    {
        return au.to_vec();
    }
    let sei = build_sei_nal(
        codec,
        &SecurityParams {
            encrypted: true,
            key_version,
            iv_base: *iv_base,
        },
    );
    let mut out = Vec::with_capacity(au.len() + sei.len() + 4 + au.len() / 64);
    let mut pieces = Vec::new();
    let mut i = 0u32;
    for u in &units {
        let gap = slice(au, u.gap_start, u.nal_start);
        let nal = slice(au, u.nal_start, u.nal_end);
        if is_vcl(codec, nal) {
            if i == 0 {
                let keep = gap.len() - start_code_len(gap);
                out.extend_from_slice(slice(gap, 0, keep));
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(&sei);
                out.extend_from_slice(slice(gap, keep, gap.len()));
            } else {
                out.extend_from_slice(gap);
            }
            pieces.extend(push_unescaped(codec, nal, nal_iv(iv_base, i), &mut out));
            i = i.wrapping_add(1);
        } else {
            out.extend_from_slice(gap);
            out.extend_from_slice(nal);
        }
    }
    out.extend_from_slice(slice(au, tail, au.len()));
    crypt_pieces(codec, c, &mut out, &mut pieces);
    out
}

// ---------------------------------------------------------------------------
// Slice header plausibility

/// Bit reader over an escaped NAL payload (skips emulation prevention bytes).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    zeros: u32,
    cur: u8,
    left: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            pos: 0,
            zeros: 0,
            cur: 0,
            left: 0,
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        loop {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            if self.zeros >= 2 && b == 3 {
                self.zeros = 0;
                continue;
            }
            self.zeros = if b == 0 { self.zeros + 1 } else { 0 };
            return Some(b);
        }
    }

    fn bit(&mut self) -> Option<u32> {
        if self.left == 0 {
            self.cur = self.next_byte()?;
            self.left = 8;
        }
        self.left -= 1;
        Some(u32::from((self.cur >> self.left) & 1))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n.min(32) {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    /// ue(v); None past the end or with more than 31 leading zeros.
    fn ue(&mut self) -> Option<u32> {
        let mut lz = 0u32;
        while self.bit()? == 0 {
            lz += 1;
            if lz > 31 {
                return None;
            }
        }
        let rest = self.bits(lz)?;
        Some(((1u64 << lz) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }
}

/// What the decryptor knows of the PPS ids seen in clear.
#[derive(Clone, Debug)]
struct PpsTable {
    /// 0: unseen; else 0x80 | dependent_slice_segments_enabled << 3 | num_extra_slice_header_bits.
    ids: [u8; 256],
    any: bool,
}

impl PpsTable {
    fn new() -> Self {
        PpsTable {
            ids: [0; 256],
            any: false,
        }
    }

    fn record(&mut self, codec: NalCodec, nal: &[u8]) {
        let h = codec.header_len();
        let mut r = BitReader::new(nal.get(h..).unwrap_or_default());
        let entry = match codec {
            NalCodec::H264 => r.ue().filter(|&id| id <= 255).map(|id| (id, 0x80u8)),
            NalCodec::H265 => (|| {
                let id = r.ue().filter(|&id| id <= 63)?;
                let _sps = r.ue().filter(|&id| id <= 15)?;
                let dep = r.bit()? as u8;
                let _output_flag_present = r.bit()?;
                let extra = r.bits(3)? as u8;
                Some((id, 0x80 | (dep << 3) | extra))
            })(),
        };
        if let Some((id, v)) = entry {
            if let Some(slot) = self.ids.get_mut(id as usize) {
                *slot = v;
                self.any = true;
            }
        }
    }

    /// None: no PPS seen at all (accept any id); Some(None): id unseen.
    fn lookup(&self, id: u32) -> Option<Option<u8>> {
        if !self.any {
            return None;
        }
        Some(self.ids.get(id as usize).copied().filter(|&v| v != 0))
    }
}

/// Is this decrypted VCL NAL unit's slice header plausible?
/// `first`: it is the first VCL NAL unit of the access unit.
fn plausible_slice(codec: NalCodec, nal: &[u8], first: bool, pps: &PpsTable) -> bool {
    let Some(t) = codec.nal_type(nal) else {
        return false;
    };
    let mut r = BitReader::new(nal.get(codec.header_len()..).unwrap_or_default());
    let mut check = || -> Option<bool> {
        match codec {
            NalCodec::H264 => {
                let first_mb = r.ue()?;
                if first && first_mb != 0 {
                    return Some(false);
                }
                let slice_type = r.ue()?;
                if slice_type > 9 || (t == 5 && !matches!(slice_type, 2 | 4 | 7 | 9)) {
                    return Some(false);
                }
                let pps_id = r.ue()?;
                if pps_id > 255 || pps.lookup(pps_id) == Some(None) {
                    return Some(false);
                }
                Some(true)
            }
            NalCodec::H265 => {
                let first_in_pic = r.bit()?;
                if first && first_in_pic != 1 {
                    return Some(false);
                }
                let irap = (16..=23).contains(&t);
                if irap {
                    r.bit()?; // no_output_of_prior_pics_flag
                }
                let pps_id = r.ue()?;
                if pps_id > 63 {
                    return Some(false);
                }
                let info = match pps.lookup(pps_id) {
                    Some(None) => return Some(false),
                    Some(Some(v)) => Some(v),
                    None => None,
                };
                if let (1, Some(v)) = (first_in_pic, info) {
                    r.bits(u32::from(v & 7))?; // slice_reserved_flag[i]
                    let slice_type = r.ue()?;
                    if slice_type > 2 || (irap && slice_type != 2) {
                        return Some(false);
                    }
                }
                Some(true)
            }
        }
    };
    check().unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Keys and the decryptor

/// Keys of one channel, as the decryptor sees them.
pub enum Lookup<'a> {
    /// The key of the requested version; `id` names this key material (a
    /// replaced key of the same version must get a new id).
    Key { cipher: &'a Sm4, id: u64 },
    /// The channel has no keys at all.
    NoKeys,
    /// The channel has keys, but not this version.
    UnknownVersion,
}

/// Source of the keys of one channel.
pub trait NalKeys {
    fn lookup(&self, key_version: u32) -> Lookup<'_>;
}

/// A simple key list: (key_version, id, key).
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: Vec<(u32, u64, Sm4)>,
}

impl KeyRing {
    pub fn new() -> Self {
        KeyRing::default()
    }

    /// Adds or replaces the key of `key_version`.
    pub fn insert(&mut self, key_version: u32, id: u64, key: &[u8; 16]) {
        self.keys.retain(|(v, _, _)| *v != key_version);
        self.keys.push((key_version, id, Sm4::new(key)));
    }

    pub fn remove(&mut self, key_version: u32) {
        self.keys.retain(|(v, _, _)| *v != key_version);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl NalKeys for KeyRing {
    fn lookup(&self, key_version: u32) -> Lookup<'_> {
        if self.keys.is_empty() {
            return Lookup::NoKeys;
        }
        match self.keys.iter().find(|(v, _, _)| *v == key_version) {
            Some((_, id, cipher)) => Lookup::Key { cipher, id: *id },
            None => Lookup::UnknownVersion,
        }
    }
}

/// Counters of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NalStats {
    /// Access units that carried our SEI with the encrypted flag.
    pub encrypted_aus: u64,
    /// Access units passed on as clear (no SEI of ours, or flag clear).
    pub clear_aus: u64,
    /// VCL NAL units decrypted, in the access units emitted.
    pub decrypted_units: u64,
    /// Dropped access units per reason, indexed like [`Failure::ALL`].
    pub failures: [u64; 6],
    pub last_failure: Option<Failure>,
    /// key_version of the last decrypted (emitted) access unit.
    pub key_version: Option<u32>,
}

impl NalStats {
    /// Count of one failure reason.
    pub fn failures_of(&self, f: Failure) -> u64 {
        self.failures.get(f.index()).copied().unwrap_or(0)
    }
}

/// Decrypted access units held while their key is Unverified.
pub const HOLD_MAX: usize = 8;
/// Consecutive plausible access units that make a key Good.
pub const VERIFY_AUS: u32 = 4;
/// Key states remembered per stream (the oldest not held are forgotten).
const KEY_STATES_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyState {
    Unverified { passed: u32 },
    Good,
    Bad,
}

struct Held<T> {
    au: Vec<u8>,
    tag: T,
    /// Key id still Unverified when this AU was held (None: releasable).
    pending: Option<u64>,
    /// (key_version, VCL NAL units decrypted) of a decrypted AU (None: clear).
    decrypted: Option<(u32, u64)>,
}

/// Stateful decryptor of one stream. `T` is the caller's per-frame metadata,
/// handed back with each emitted access unit.
pub struct NalDecryptor<T> {
    codec: NalCodec,
    stats: NalStats,
    pps: PpsTable,
    key_states: Vec<(u64, KeyState)>,
    held: VecDeque<Held<T>>,
    units: Vec<Unit>,
}

impl<T> std::fmt::Debug for NalDecryptor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NalDecryptor")
            .field("codec", &self.codec)
            .field("stats", &self.stats)
            .field("key_states", &self.key_states)
            .field("held", &self.held.len())
            .finish()
    }
}

impl<T> NalDecryptor<T> {
    pub fn new(codec: NalCodec) -> Self {
        NalDecryptor {
            codec,
            stats: NalStats::default(),
            pps: PpsTable::new(),
            key_states: Vec::new(),
            held: VecDeque::with_capacity(HOLD_MAX + 1),
            units: Vec::new(),
        }
    }

    pub fn stats(&self) -> &NalStats {
        &self.stats
    }

    /// Access units currently held for key verification.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn fail(&mut self, f: Failure) {
        if let Some(c) = self.stats.failures.get_mut(f.index()) {
            *c += 1;
        }
        self.stats.last_failure = Some(f);
    }

    fn state(&self, id: u64) -> Option<KeyState> {
        self.key_states
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, s)| *s)
    }

    fn set_state(&mut self, id: u64, s: KeyState) {
        if let Some(e) = self.key_states.iter_mut().find(|(k, _)| *k == id) {
            e.1 = s;
            return;
        }
        if self.key_states.len() >= KEY_STATES_MAX {
            let held = &self.held;
            if let Some(pos) = self
                .key_states
                .iter()
                .position(|(k, _)| !held.iter().any(|h| h.pending == Some(*k)))
            {
                self.key_states.remove(pos);
            }
        }
        self.key_states.push((id, s));
    }

    fn emit(
        &mut self,
        au: Vec<u8>,
        tag: T,
        decrypted: Option<(u32, u64)>,
        out: &mut Vec<(Vec<u8>, T)>,
    ) {
        if let Some((v, units)) = decrypted {
            self.stats.decrypted_units += units;
            self.stats.key_version = Some(v);
        }
        out.push((au, tag));
    }

    /// Releases held AUs from the front while their key is verified.
    fn release(&mut self, out: &mut Vec<(Vec<u8>, T)>) {
        while let Some(front) = self.held.front() {
            let ready = match front.pending {
                None => true,
                Some(id) => self.state(id) == Some(KeyState::Good),
            };
            if !ready {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                self.emit(h.au, h.tag, h.decrypted, out);
            }
        }
    }

    /// Queues (or emits, when nothing is held and the key is verified) a passed AU.
    fn pass(
        &mut self,
        au: Vec<u8>,
        tag: T,
        pending: Option<u64>,
        decrypted: Option<(u32, u64)>,
        out: &mut Vec<(Vec<u8>, T)>,
    ) {
        if pending.is_none() && self.held.is_empty() {
            self.emit(au, tag, decrypted, out);
            return;
        }
        if self.held.len() >= HOLD_MAX {
            // Full: every held AU passed its checks, so their keys become Good.
            let ids: Vec<u64> = self.held.iter().filter_map(|h| h.pending).collect();
            for id in ids {
                self.set_state(id, KeyState::Good);
            }
            self.release(out);
        }
        let pending = pending.filter(|&id| self.state(id) != Some(KeyState::Good));
        if pending.is_none() && self.held.is_empty() {
            self.emit(au, tag, decrypted, out);
        } else {
            self.held.push_back(Held {
                au,
                tag,
                pending,
                decrypted,
            });
        }
    }

    /// One Annex-B access unit in; clear access units appended to `out`
    /// (zero, one, or several when held ones are released), in input order.
    /// The output of an encrypted AU equals the encoder's input byte for byte
    /// (our SEI NAL unit and its start code are removed; other SEI stays). An
    /// AU without our SEI passes through unchanged (counted clear). Failed
    /// AUs are dropped and counted by reason, never emitted. `keyframe` is the
    /// caller's key-frame flag for this AU; the checks rely on the NAL unit
    /// types instead, so it is currently informational only.
    pub fn push(
        &mut self,
        au: Vec<u8>,
        keyframe: bool,
        tag: T,
        keys: &dyn NalKeys,
        out: &mut Vec<(Vec<u8>, T)>,
    ) {
        let _ = keyframe;
        let codec = self.codec;
        let mut units = std::mem::take(&mut self.units);
        let tail = split_annexb(&au, &mut units);
        let result = self.classify(&au, &units);
        let (sec_idx, params) = match result {
            Err(f) => {
                self.units = units;
                self.fail(f);
                return;
            }
            Ok(None) => {
                self.units = units;
                self.stats.clear_aus += 1;
                self.pass(au, tag, None, None, out);
                return;
            }
            Ok(Some(x)) => x,
        };
        if !params.encrypted {
            let (clear, _, _) = rebuild(codec, &au, &units, tail, sec_idx, None, &self.pps);
            self.units = units;
            self.stats.clear_aus += 1;
            self.pass(clear, tag, None, None, out);
            return;
        }
        self.stats.encrypted_aus += 1;
        let (cipher, id) = match keys.lookup(params.key_version) {
            Lookup::NoKeys => {
                self.units = units;
                self.fail(Failure::NoKey);
                return;
            }
            Lookup::UnknownVersion => {
                self.units = units;
                self.fail(Failure::UnknownKeyVersion);
                return;
            }
            Lookup::Key { cipher, id } => (cipher, id),
        };
        let state = self.state(id).unwrap_or(KeyState::Unverified { passed: 0 });
        if state == KeyState::Bad {
            self.units = units;
            self.fail(Failure::WrongKey);
            return;
        }
        let (clear, verdict, n_vcl) = rebuild(
            codec,
            &au,
            &units,
            tail,
            sec_idx,
            Some((cipher, &params.iv_base)),
            &self.pps,
        );
        self.units = units;
        let kv = Some((params.key_version, n_vcl));
        match (state, verdict) {
            (_, Verdict::Implausible) => {
                self.fail(Failure::WrongKey);
                if let KeyState::Unverified { .. } = state {
                    self.set_state(id, KeyState::Bad);
                    let before = self.held.len();
                    self.held.retain(|h| h.pending != Some(id));
                    for _ in 0..before - self.held.len() {
                        self.fail(Failure::WrongKey);
                    }
                    self.release(out);
                }
            }
            (KeyState::Good, _) => self.pass(clear, tag, None, kv, out),
            (KeyState::Unverified { passed }, v) => {
                let passed = passed + u32::from(v == Verdict::Plausible);
                if passed >= VERIFY_AUS {
                    self.set_state(id, KeyState::Good);
                    self.release(out);
                    self.pass(clear, tag, None, kv, out);
                } else {
                    self.set_state(id, KeyState::Unverified { passed });
                    self.pass(clear, tag, Some(id), kv, out);
                }
            }
            (KeyState::Bad, _) => self.fail(Failure::WrongKey),
        }
    }

    /// Finds our SEI (index of its unit and its parameters) and records the
    /// PPS ids of the access unit. Err(Malformed) for a bad SEI, a second one,
    /// or an encrypted-flagged one after a VCL NAL unit.
    fn classify(
        &mut self,
        au: &[u8],
        units: &[Unit],
    ) -> Result<Option<(usize, SecurityParams)>, Failure> {
        let codec = self.codec;
        let mut found: Option<(usize, SecurityParams)> = None;
        let mut seen_vcl = false;
        for (k, u) in units.iter().enumerate() {
            let nal = slice(au, u.nal_start, u.nal_end);
            if is_vcl(codec, nal) {
                seen_vcl = true;
                continue;
            }
            if let Some(p) = parse_sei_nal(codec, nal)? {
                if found.is_some() || (seen_vcl && p.encrypted) {
                    return Err(Failure::Malformed);
                }
                found = Some((k, p));
            }
        }
        let pps_type = match codec {
            NalCodec::H264 => H264_PPS,
            NalCodec::H265 => H265_PPS,
        };
        for u in units {
            let nal = slice(au, u.nal_start, u.nal_end);
            if codec.nal_type(nal) == Some(pps_type) {
                self.pps.record(codec, nal);
            }
        }
        Ok(found)
    }

    /// End of stream: release held AUs that passed their checks (all held
    /// ones did; failing ones are discarded at once).
    pub fn finish(&mut self, out: &mut Vec<(Vec<u8>, T)>) {
        while let Some(h) = self.held.pop_front() {
            self.emit(h.au, h.tag, h.decrypted, out);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Plausible,
    Implausible,
    /// No VCL NAL unit was decrypted: nothing to judge.
    Empty,
}

/// Rebuilds an access unit without our SEI (unit `sec_idx`) and its start
/// code, decrypting the VCL NAL units when `crypt` is given and judging
/// their slice headers.
fn rebuild(
    codec: NalCodec,
    au: &[u8],
    units: &[Unit],
    tail: usize,
    sec_idx: usize,
    crypt: Option<(&Sm4, &[u8; 16])>,
    pps: &PpsTable,
) -> (Vec<u8>, Verdict, u64) {
    let mut out = Vec::with_capacity(au.len());
    let mut i = 0u32;
    // (piece, where it starts, index i, length) of each VCL NAL unit, in
    // order; no piece: its RBSP is too short to encrypt.
    let mut vcl: Vec<(Option<usize>, usize, u32, usize)> = Vec::new();
    let mut pieces = Vec::new();
    for (k, u) in units.iter().enumerate() {
        let gap = slice(au, u.gap_start, u.nal_start);
        let nal = slice(au, u.nal_start, u.nal_end);
        if k == sec_idx {
            out.extend_from_slice(slice(gap, 0, gap.len() - start_code_len(gap)));
            continue;
        }
        out.extend_from_slice(gap);
        match crypt {
            Some((_, iv_base)) if is_vcl(codec, nal) => {
                let at = out.len();
                match push_unescaped(codec, nal, nal_iv(iv_base, i), &mut out) {
                    Some(p) => {
                        vcl.push((Some(pieces.len()), at, i, nal.len()));
                        pieces.push(p);
                    }
                    None => vcl.push((None, at, i, nal.len())),
                }
                i = i.wrapping_add(1);
            }
            _ => out.extend_from_slice(nal),
        }
    }
    out.extend_from_slice(slice(au, tail, au.len()));
    let mut verdict = Verdict::Empty;
    if let Some((c, _)) = crypt {
        let before: Vec<(usize, usize)> = pieces.iter().map(|p| (p.start, p.end)).collect();
        crypt_pieces(codec, c, &mut out, &mut pieces);
        // Where each VCL NAL unit ended up (an escape moves what follows).
        let shift = |at: usize| -> usize {
            let mut delta = 0isize;
            for (p, (s, e)) in pieces.iter().zip(&before) {
                if *s < at {
                    delta += (p.end - p.start) as isize - (e - s) as isize;
                }
            }
            (at as isize + delta) as usize
        };
        for &(piece, at, idx, len) in &vcl {
            let nal = match piece {
                Some(pi) => pieces.get(pi).and_then(|p| out.get(p.start..p.end)),
                None => out.get(shift(at)..shift(at) + len),
            };
            let ok = plausible_slice(codec, nal.unwrap_or_default(), idx == 0, pps);
            verdict = match (verdict, ok) {
                (Verdict::Implausible, _) | (_, false) => Verdict::Implausible,
                _ => Verdict::Plausible,
            };
        }
    }
    (out, verdict, u64::from(i))
}

#[cfg(test)]
mod tests;
