//! SM3 (GB/T 32905) and HMAC-SM3 (RFC 2104 with SM3, 64-byte blocks).
//!
//! The hash is `libsm`'s one-shot `Sm3Hash`; HMAC therefore hashes
//! `(K XOR ipad) || message` as one buffer, built in a buffer the caller can
//! reuse ([`HmacSm3::mac_with_buffer`]).

use libsm::sm3::hash::Sm3Hash;

/// SM3 digest of `data`.
pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3Hash::new(data).get_hash()
}

const BLOCK: usize = 64;

/// HMAC-SM3 with the padded keys precomputed. `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct HmacSm3 {
    ipad: [u8; BLOCK],
    opad: [u8; BLOCK],
}

impl std::fmt::Debug for HmacSm3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSm3 { .. }")
    }
}

impl HmacSm3 {
    /// Keys longer than the 64-byte block are hashed first (RFC 2104).
    pub fn new(key: &[u8]) -> HmacSm3 {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            k[..32].copy_from_slice(&sm3(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for i in 0..BLOCK {
            ipad[i] ^= k[i];
            opad[i] ^= k[i];
        }
        HmacSm3 { ipad, opad }
    }

    /// HMAC over the concatenation of parts.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut buf = Vec::with_capacity(BLOCK + total.max(32));
        self.mac_with_buffer(parts, &mut buf)
    }

    /// Same as [`HmacSm3::mac`], building the hash inputs in `buf` (cleared
    /// first) so a caller that MACs many messages allocates once.
    pub fn mac_with_buffer(&self, parts: &[&[u8]], buf: &mut Vec<u8>) -> [u8; 32] {
        buf.clear();
        buf.extend_from_slice(&self.ipad);
        for p in parts {
            buf.extend_from_slice(p);
        }
        let inner = sm3(buf);
        buf.clear();
        buf.extend_from_slice(&self.opad);
        buf.extend_from_slice(&inner);
        sm3(buf)
    }
}

/// HMAC-SM3 of `data` under `key`.
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    HmacSm3::new(key).mac(&[data])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn gbt32905_examples() {
        assert_eq!(
            hex(&sm3(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        assert_eq!(
            hex(&sm3("abcd".repeat(16).as_bytes())),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
        );
    }

    #[test]
    fn hmac_is_rfc2104() {
        // Definition: H((K^opad) || H((K^ipad) || m)), for a short and a long key.
        for key in [&b"key"[..], &[0xaau8; 100][..], &[][..], &[7u8; 64][..]] {
            let m = b"The quick brown fox jumps over the lazy dog";
            let mut k = [0u8; 64];
            if key.len() > 64 {
                k[..32].copy_from_slice(&sm3(key));
            } else {
                k[..key.len()].copy_from_slice(key);
            }
            let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            inner.extend_from_slice(m);
            let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            outer.extend_from_slice(&sm3(&inner));
            let want = sm3(&outer);
            assert_eq!(hmac_sm3(key, m), want);
            let h = HmacSm3::new(key);
            assert_eq!(h.mac(&[&m[..10], &m[10..], &[]]), want);
            let mut buf = vec![1, 2, 3];
            assert_eq!(h.mac_with_buffer(&[m], &mut buf), want);
            assert_eq!(h.clone().mac(&[m]), want);
        }
        assert_ne!(hmac_sm3(b"a", b"m"), hmac_sm3(b"b", b"m"));
    }
}
