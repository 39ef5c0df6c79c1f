//! Profile `srtp-sm4`: SRTP (RFC 3711) with SM4 in AES's roles.
//!
//! - cipher `SM4_CM`: RFC 3711 counter mode with SM4,
//!   `IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)`, `i = ROC * 2^16 + SEQ`;
//! - authentication `HMAC_SM3_80`: the first 10 bytes of
//!   HMAC-SM3(auth_key, header || encrypted payload || BE32(ROC));
//! - key derivation: RFC 3711 4.3 with SM4_CM as PRF and
//!   key_derivation_rate 0: label 0 -> 16-byte encryption key, label 1 ->
//!   32-byte authentication key, label 2 -> 14-byte salt;
//! - packet index estimation of RFC 3711 3.3.1 / Appendix A and a replay
//!   window of [`REPLAY_WINDOW`] packets (3.3.2), updated only after a good tag.
//!
//! Keys come from configuration or SDP (`a=crypto:1 SM4_CM_128_HMAC_SM3_80
//! inline:<base64 of key || salt>`). SRTCP is out of scope.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use crate::rfc3711::{self, LABEL_RTP_AUTH, LABEL_RTP_ENCRYPTION, LABEL_RTP_SALT};
use crate::sm3::{sm3, HmacSm3};
use crate::sm4::{hex4, Sm4};
use crate::{Error, Failure};

/// SDP crypto-suite name of the profile.
pub const SUITE: &str = "SM4_CM_128_HMAC_SM3_80";
/// Length of the authentication tag appended to each packet.
pub const TAG_LEN: usize = 10;
/// Size of the receiver's replay window, in packets.
pub const REPLAY_WINDOW: u64 = 128;
/// Fixed RTP header length (without CSRCs and extension).
const RTP_MIN_HEADER: usize = 12;

/// A master key and salt (RFC 3711 3.2.1). `Debug` shows the check value only.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    pub key: [u8; 16],
    pub salt: [u8; 14],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("check_value", &self.check_value())
            .finish()
    }
}

/// Standard alphabet, padding optional (some SDP writers drop it).
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl MasterKey {
    /// Parses an `inline:<base64 of key||salt>` value; the bare base64 and an
    /// optional `|lifetime|MKI:len` suffix (ignored) are accepted too.
    pub fn from_inline(s: &str) -> Result<MasterKey, Error> {
        let s = s.trim();
        let s = s.strip_prefix("inline:").unwrap_or(s);
        let b64 = s.split('|').next().unwrap_or("").trim();
        let bytes = B64_LENIENT.decode(b64).map_err(|_| Error::Base64)?;
        if bytes.len() != 30 {
            return Err(Error::KeyLength { len: bytes.len() });
        }
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.copy_from_slice(&bytes[..16]);
        salt.copy_from_slice(&bytes[16..30]);
        Ok(MasterKey { key, salt })
    }

    /// `inline:<base64 of key || salt>`.
    pub fn to_inline(&self) -> String {
        let mut bytes = [0u8; 30];
        bytes[..16].copy_from_slice(&self.key);
        bytes[16..].copy_from_slice(&self.salt);
        format!("inline:{}", STANDARD.encode(bytes))
    }

    /// Parses an SDP line or value `a=crypto:<tag> SM4_CM_128_HMAC_SM3_80
    /// inline:...` (with or without the `a=` prefix). Returns `Ok(None)` for
    /// another crypto-suite, `Ok(Some((tag, key)))` for ours. Of several key
    /// parameters (`inline:..;inline:..`) the first is used; session
    /// parameters after the key parameters are ignored.
    pub fn from_crypto_attr(line: &str) -> Result<Option<(u32, MasterKey)>, Error> {
        let l = line.trim();
        let l = l.strip_prefix("a=").unwrap_or(l);
        let rest = l.strip_prefix("crypto:").ok_or(Error::NotCryptoAttr)?;
        let mut fields = rest.split_ascii_whitespace();
        let tag = fields
            .next()
            .ok_or(Error::BadCryptoAttr("missing tag"))?
            .parse::<u32>()
            .map_err(|_| Error::BadCryptoAttr("tag is not a number"))?;
        let suite = fields
            .next()
            .ok_or(Error::BadCryptoAttr("missing crypto-suite"))?;
        if suite != SUITE {
            return Ok(None);
        }
        let params = fields
            .next()
            .ok_or(Error::BadCryptoAttr("missing key parameters"))?;
        let first = params.split(';').next().unwrap_or("");
        if !first.starts_with("inline:") {
            return Err(Error::BadCryptoAttr("key method is not inline"));
        }
        MasterKey::from_inline(first).map(|k| Some((tag, k)))
    }

    /// `a=crypto:<tag> SM4_CM_128_HMAC_SM3_80 inline:...`.
    pub fn crypto_attr(&self, tag: u32) -> String {
        format!("a=crypto:{tag} {SUITE} {}", self.to_inline())
    }

    /// Check value for listings: first 4 bytes of SM3(key || salt) in hex.
    /// Reveals no key bytes; differs when either the key or the salt differs.
    pub fn check_value(&self) -> String {
        let mut bytes = [0u8; 30];
        bytes[..16].copy_from_slice(&self.key);
        bytes[16..].copy_from_slice(&self.salt);
        hex4(&sm3(&bytes))
    }
}

/// Session keys derived from a master key (RFC 3711 4.3, key_derivation_rate 0).
#[derive(Clone)]
pub struct SessionKeys {
    enc_key: [u8; 16],
    enc: Sm4,
    auth_key: [u8; 32],
    auth: HmacSm3,
    salt: [u8; 14],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys { .. }")
    }
}

impl SessionKeys {
    /// Derives the encryption key (label 0), authentication key (label 1)
    /// and salt (label 2) with the SM4 counter-mode PRF.
    pub fn derive(m: &MasterKey) -> SessionKeys {
        let master = Sm4::new(&m.key);
        let mut enc_key = [0u8; 16];
        let mut auth_key = [0u8; 32];
        let mut salt = [0u8; 14];
        rfc3711::kdf(&master, &m.salt, LABEL_RTP_ENCRYPTION, 0, &mut enc_key);
        rfc3711::kdf(&master, &m.salt, LABEL_RTP_AUTH, 0, &mut auth_key);
        rfc3711::kdf(&master, &m.salt, LABEL_RTP_SALT, 0, &mut salt);
        SessionKeys {
            enc: Sm4::new(&enc_key),
            enc_key,
            auth: HmacSm3::new(&auth_key),
            auth_key,
            salt,
        }
    }

    /// The derived session encryption key (for tests and cross-checks; do not log).
    pub fn enc_key(&self) -> &[u8; 16] {
        &self.enc_key
    }

    /// The derived session authentication key (for tests and cross-checks; do not log).
    pub fn auth_key(&self) -> &[u8; 32] {
        &self.auth_key
    }

    /// The derived session salt.
    pub fn salt(&self) -> &[u8; 14] {
        &self.salt
    }

    /// Counter-mode IV of packet `index` of `ssrc` under these keys.
    pub fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        rfc3711::srtp_iv(&self.salt, ssrc, index)
    }

    fn crypt(&self, ssrc: u32, index: u64, payload: &mut [u8]) {
        crate::sm4::ctr_apply(&self.enc, &self.iv(ssrc, index), payload);
    }

    fn tag(&self, authenticated: &[u8], roc: u32) -> [u8; TAG_LEN] {
        let full = self.auth.mac(&[authenticated, &roc.to_be_bytes()]);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&full[..TAG_LEN]);
        t
    }

    /// Tags of several (authenticated portion, ROC) pairs, computed in
    /// parallel lanes (multi-buffer HMAC-SM3).
    fn tags_many(&self, items: &[(&[u8], u32)]) -> Vec<[u8; TAG_LEN]> {
        let rocs: Vec<[u8; 4]> = items.iter().map(|(_, r)| r.to_be_bytes()).collect();
        let parts: Vec<[&[u8]; 2]> = items
            .iter()
            .zip(&rocs)
            .map(|((a, _), r)| [*a, &r[..]])
            .collect();
        let msgs: Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
        let mut full = vec![[0u8; 32]; items.len()];
        self.auth.mac_many(&msgs, &mut full);
        full.iter()
            .map(|f| {
                let mut t = [0u8; TAG_LEN];
                t.copy_from_slice(&f[..TAG_LEN]);
                t
            })
            .collect()
    }
}

/// A tag computed ahead for one packet of a batch: under which key id and
/// ROC guess, and the tag.
type Precomputed = Option<(u64, u32, [u8; TAG_LEN])>;

/// Keys of one channel for SRTP (several live at once during a rotation).
pub trait SrtpKeys {
    /// The live keys with a caller-chosen id each (ids name keys in caches).
    fn keys(&self) -> Vec<(u64, MasterKey)>;
    fn is_empty(&self) -> bool;
}

impl SrtpKeys for Vec<(u64, MasterKey)> {
    fn keys(&self) -> Vec<(u64, MasterKey)> {
        self.clone()
    }
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

impl SrtpKeys for [(u64, MasterKey)] {
    fn keys(&self) -> Vec<(u64, MasterKey)> {
        self.to_vec()
    }
    fn is_empty(&self) -> bool {
        <[(u64, MasterKey)]>::is_empty(self)
    }
}

/// Length of the RTP header (fixed part, CSRCs, header extension) or None
/// when the header is not a valid version-2 header that fits in `p`.
pub fn rtp_header_len(p: &[u8]) -> Option<usize> {
    let b0 = *p.first()?;
    if p.len() < RTP_MIN_HEADER || b0 >> 6 != 2 {
        return None;
    }
    let mut len = RTP_MIN_HEADER + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        let words = p.get(len + 2..len + 4)?;
        let words = usize::from(u16::from_be_bytes([words[0], words[1]]));
        len += 4 + 4 * words;
    }
    (len <= p.len()).then_some(len)
}

fn seq_ssrc(p: &[u8]) -> Option<(u16, u32)> {
    let s = p.get(2..4)?;
    let x = p.get(8..12)?;
    Some((
        u16::from_be_bytes([s[0], s[1]]),
        u32::from_be_bytes([x[0], x[1], x[2], x[3]]),
    ))
}

/// RFC 3711 Appendix A: the index of a packet with sequence number `seq`
/// given the highest index received so far. None when the guessed ROC is
/// outside 0..2^32 (before the start of the stream, or after 2^48 packets).
fn estimate_index(highest: u64, seq: u16) -> Option<u64> {
    let roc = (highest >> 16) as i64;
    let s_l = (highest & 0xffff) as i64;
    let seq_i = i64::from(seq);
    let v = if s_l < 32768 {
        if seq_i - s_l > 32768 {
            roc - 1
        } else {
            roc
        }
    } else if s_l - 32768 > seq_i {
        roc + 1
    } else {
        roc
    };
    if !(0..=i64::from(u32::MAX)).contains(&v) {
        return None;
    }
    Some(((v as u64) << 16) | u64::from(seq))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone, Copy)]
struct RxStream {
    ssrc: u32,
    /// Highest authenticated packet index (ROC * 2^16 + SEQ).
    highest: u64,
    /// Bit k set: index `highest - k` was received (k < 128).
    window: u128,
}

struct CachedKey {
    id: u64,
    master: MasterKey,
    keys: SessionKeys,
}

/// Receiver context of one stream (one SSRC; if the SSRC changes, the ROC and
/// the replay window restart with the first authenticated packet of the new SSRC).
pub struct SrtpReceiver {
    stream: Option<RxStream>,
    last_good: Option<u64>,
    cache: Vec<CachedKey>,
}

impl Default for SrtpReceiver {
    fn default() -> Self {
        SrtpReceiver::new()
    }
}

impl std::fmt::Debug for SrtpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpReceiver")
            .field("stream", &self.stream)
            .field("last_good", &self.last_good)
            .finish()
    }
}

impl SrtpReceiver {
    pub fn new() -> SrtpReceiver {
        SrtpReceiver {
            stream: None,
            last_good: None,
            cache: Vec::new(),
        }
    }

    /// Index of the cached session keys for (id, master), deriving them if needed.
    fn cached(&mut self, id: u64, master: &MasterKey) -> usize {
        if let Some(i) = self
            .cache
            .iter()
            .position(|c| c.id == id && c.master == *master)
        {
            return i;
        }
        let entry = CachedKey {
            id,
            master: master.clone(),
            keys: SessionKeys::derive(master),
        };
        if let Some(i) = self.cache.iter().position(|c| c.id == id) {
            // Same id, new key material: replace.
            self.cache[i] = entry;
            return i;
        }
        self.cache.push(entry);
        self.cache.len() - 1
    }

    /// Verifies the tag (HMAC-SM3-80 over header+payload || ROC), checks
    /// replay (window of 128, RFC 3711 3.3.2) and decrypts. On success the
    /// clear RTP packet (header + payload, tag removed) is APPENDED to `out`;
    /// on error `out` is unchanged. The key that worked last is tried first,
    /// then the other live keys (trial by tag; derived keys cached by id).
    pub fn unprotect(
        &mut self,
        packet: &[u8],
        keys: &dyn SrtpKeys,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        self.unprotect_with(packet, keys, out, None)
    }

    /// [`SrtpReceiver::unprotect`] over several packets of the stream, in
    /// order, with the same result for each as `unprotect` would give. The
    /// tags are computed together first, in parallel lanes (multi-buffer
    /// HMAC-SM3), under the key that worked last and the index each packet
    /// would get if the ones before it are authentic; a packet for which
    /// that guess does not hold is checked alone. `each(i, result)` gets
    /// packet i's outcome and, on success, its clear packet.
    pub fn unprotect_batch(
        &mut self,
        packets: &[&[u8]],
        keys: &dyn SrtpKeys,
        mut each: impl FnMut(usize, Result<&[u8], Failure>),
    ) {
        let pre = self.precompute(packets, keys);
        let mut out = Vec::with_capacity(1500);
        for (i, p) in packets.iter().enumerate() {
            out.clear();
            let hint = pre.get(i).copied().flatten();
            match self.unprotect_with(p, keys, &mut out, hint) {
                Ok(()) => each(i, Ok(&out)),
                Err(f) => each(i, Err(f)),
            }
        }
    }

    /// The tags of a batch under the last good key, each packet's ROC
    /// guessed as if every packet before it were authentic.
    fn precompute(&mut self, packets: &[&[u8]], keys: &dyn SrtpKeys) -> Vec<Precomputed> {
        let mut pre = vec![None; packets.len()];
        if packets.len() < 2 || keys.is_empty() {
            return pre;
        }
        let live = keys.keys();
        let Some((id, master)) = live.iter().find(|(id, _)| Some(*id) == self.last_good) else {
            return pre;
        };
        let c = self.cached(*id, master);
        let mut stream = self.stream;
        let mut items = Vec::with_capacity(packets.len());
        let mut at = Vec::with_capacity(packets.len());
        for (i, p) in packets.iter().enumerate() {
            let Some(auth_len) = p
                .len()
                .checked_sub(TAG_LEN)
                .filter(|&n| n >= RTP_MIN_HEADER)
            else {
                continue;
            };
            let authenticated = &p[..auth_len];
            let Some((seq, ssrc)) = seq_ssrc(authenticated) else {
                continue;
            };
            let index = match stream.filter(|s| s.ssrc == ssrc) {
                Some(s) => match estimate_index(s.highest, seq) {
                    Some(ix) => ix,
                    None => continue,
                },
                None => u64::from(seq),
            };
            stream = Some(RxStream {
                ssrc,
                highest: stream
                    .filter(|s| s.ssrc == ssrc)
                    .map_or(index, |s| s.highest.max(index)),
                window: 0,
            });
            items.push((authenticated, (index >> 16) as u32));
            at.push(i);
        }
        let Some(entry) = self.cache.get(c) else {
            return pre;
        };
        if items.len() < 2 {
            return pre;
        }
        let tags = entry.keys.tags_many(&items);
        for ((i, (_, roc)), tag) in at.into_iter().zip(items).zip(tags) {
            pre[i] = Some((*id, roc, tag));
        }
        pre
    }

    fn unprotect_with(
        &mut self,
        packet: &[u8],
        keys: &dyn SrtpKeys,
        out: &mut Vec<u8>,
        pre: Precomputed,
    ) -> Result<(), Failure> {
        let auth_len = packet
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&n| n >= RTP_MIN_HEADER)
            .ok_or(Failure::Malformed)?;
        let (authenticated, tag) = packet.split_at(auth_len);
        let hlen = rtp_header_len(authenticated).ok_or(Failure::Malformed)?;
        let (seq, ssrc) = seq_ssrc(authenticated).ok_or(Failure::Malformed)?;
        if keys.is_empty() {
            return Err(Failure::NoKey);
        }

        // Index estimation and replay check (before the MAC, as RFC 3711 3.3 allows).
        let known = self.stream.filter(|s| s.ssrc == ssrc);
        let index = match known {
            Some(s) => {
                let index = estimate_index(s.highest, seq).ok_or(Failure::Replay)?;
                if index <= s.highest {
                    let delta = s.highest - index;
                    if delta >= REPLAY_WINDOW || s.window & (1u128 << delta) != 0 {
                        return Err(Failure::Replay);
                    }
                }
                index
            }
            None => u64::from(seq), // a new stream starts with ROC 0
        };
        let roc = (index >> 16) as u32;

        // Trial by tag: the key that worked last first.
        let live = keys.keys();
        if live.is_empty() {
            return Err(Failure::NoKey);
        }
        // Forget derived keys of ids that are no longer live.
        if self.cache.len() > live.len() + 2 {
            self.cache
                .retain(|c| live.iter().any(|(id, _)| *id == c.id));
        }
        let first = live.iter().position(|(id, _)| Some(*id) == self.last_good);
        let order = first
            .into_iter()
            .chain((0..live.len()).filter(|&i| Some(i) != first));
        let mut found = None;
        for i in order {
            let Some((id, master)) = live.get(i) else {
                continue;
            };
            let c = self.cached(*id, master);
            let Some(entry) = self.cache.get(c) else {
                continue;
            };
            let t = match pre {
                Some((pid, proc, t)) if pid == *id && proc == roc => t,
                _ => entry.keys.tag(authenticated, roc),
            };
            if ct_eq(&t, tag) {
                found = Some((*id, c));
                break;
            }
        }
        let (id, c) = found.ok_or(Failure::BadTag)?;
        let entry = self.cache.get(c).ok_or(Failure::BadTag)?;

        // Authenticated: update ROC / highest index / window, then decrypt.
        self.stream = Some(match known {
            Some(mut s) => {
                if index > s.highest {
                    let shift = index - s.highest;
                    s.window = if shift >= 128 { 0 } else { s.window << shift };
                    s.window |= 1;
                    s.highest = index;
                } else {
                    s.window |= 1u128 << (s.highest - index);
                }
                s
            }
            None => RxStream {
                ssrc,
                highest: index,
                window: 1,
            },
        });
        self.last_good = Some(id);
        let start = out.len();
        out.extend_from_slice(authenticated);
        if let Some(payload) = out.get_mut(start + hlen..) {
            entry.keys.crypt(ssrc, index, payload);
        }
        Ok(())
    }

    /// Rollover counter of the highest authenticated packet (0 before any).
    pub fn roc(&self) -> u32 {
        self.stream.map_or(0, |s| (s.highest >> 16) as u32)
    }

    /// Highest authenticated packet index (ROC * 2^16 + SEQ), if any.
    pub fn highest_index(&self) -> Option<u64> {
        self.stream.map(|s| s.highest)
    }
}

/// Sender context of one stream.
pub struct SrtpSender {
    keys: SessionKeys,
    /// (SSRC, highest index sent).
    stream: Option<(u32, u64)>,
}

impl std::fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSender")
            .field("stream", &self.stream)
            .finish()
    }
}

impl SrtpSender {
    pub fn new(m: &MasterKey) -> SrtpSender {
        SrtpSender {
            keys: SessionKeys::derive(m),
            stream: None,
        }
    }

    /// Rotation: new keys from the next packet on; keeps the ROC/sequence state.
    pub fn set_key(&mut self, m: &MasterKey) {
        self.keys = SessionKeys::derive(m);
    }

    /// Rollover counter of the highest index sent.
    pub fn roc(&self) -> u32 {
        self.stream.map_or(0, |(_, h)| (h >> 16) as u32)
    }

    /// Appends the SRTP packet (header, encrypted payload, 10-byte tag) of the
    /// clear RTP packet `rtp` to `out`. The ROC follows the sequence numbers
    /// (it increments when they wrap); a new SSRC restarts at ROC 0.
    /// Err(Malformed) on a bad RTP header (`out` unchanged then).
    pub fn protect(&mut self, rtp: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        let hlen = rtp_header_len(rtp).ok_or(Failure::Malformed)?;
        let (seq, ssrc) = seq_ssrc(rtp).ok_or(Failure::Malformed)?;
        let index = match self.stream {
            Some((s, highest)) if s == ssrc => {
                let index = estimate_index(highest, seq).unwrap_or(u64::from(seq));
                self.stream = Some((ssrc, highest.max(index)));
                index
            }
            _ => {
                self.stream = Some((ssrc, u64::from(seq)));
                u64::from(seq)
            }
        };
        let roc = (index >> 16) as u32;
        let start = out.len();
        out.extend_from_slice(rtp);
        if let Some(payload) = out.get_mut(start + hlen..) {
            self.keys.crypt(ssrc, index, payload);
        }
        let tag = match out.get(start..) {
            Some(pkt) => self.keys.tag(pkt, roc),
            None => return Err(Failure::Malformed),
        };
        out.extend_from_slice(&tag);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_estimation_appendix_a() {
        // in order
        assert_eq!(estimate_index(100, 101), Some(101));
        // wrap forward: s_l high, seq small -> ROC + 1
        assert_eq!(estimate_index(65535, 0), Some(65536));
        assert_eq!(estimate_index(0x1_fff0, 5), Some(0x2_0005));
        // late packet from before the wrap: s_l small, seq high -> ROC - 1
        assert_eq!(estimate_index(0x2_0003, 65530), Some(0x1_fffa));
        // before the start of the stream
        assert_eq!(estimate_index(3, 65530), None);
        // reordered within the same ROC
        assert_eq!(estimate_index(0x5_8000, 0x7000), Some(0x5_7000));
    }

    #[test]
    fn header_lengths() {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(rtp_header_len(&p), Some(12));
        p[0] = 0x40;
        assert_eq!(rtp_header_len(&p), None);
        p[0] = 0x82; // two CSRCs, missing
        assert_eq!(rtp_header_len(&p), None);
        p.extend_from_slice(&[0; 8]);
        assert_eq!(rtp_header_len(&p), Some(20));
        p[0] = 0x90; // extension header
        assert_eq!(rtp_header_len(&p[..14]), None);
        assert_eq!(rtp_header_len(&p), Some(16)); // length 0 words
        p[14] = 0;
        p[15] = 2; // 2 words, needs 24 bytes
        assert_eq!(rtp_header_len(&p), None);
        p.extend_from_slice(&[0; 4]);
        assert_eq!(rtp_header_len(&p), Some(24));
        assert_eq!(rtp_header_len(&[]), None);
    }

    #[test]
    fn inline_forms() {
        let m = MasterKey {
            key: [1; 16],
            salt: [2; 14],
        };
        let s = m.to_inline();
        assert!(s.starts_with("inline:"));
        assert_eq!(MasterKey::from_inline(&s).unwrap(), m);
        let bare = s.trim_start_matches("inline:");
        assert_eq!(MasterKey::from_inline(bare).unwrap(), m);
        assert_eq!(MasterKey::from_inline(&format!("{s}|2^31|1:1")).unwrap(), m);
        assert_eq!(
            MasterKey::from_inline("inline:AAAA"),
            Err(Error::KeyLength { len: 3 })
        );
        assert_eq!(MasterKey::from_inline("inline:!!!"), Err(Error::Base64));
        assert!(!format!("{m:?}").contains("1, 1"));
        assert_eq!(m.check_value().len(), 8);
        assert_ne!(
            m.check_value(),
            MasterKey {
                key: [1; 16],
                salt: [3; 14]
            }
            .check_value()
        );
    }
}
