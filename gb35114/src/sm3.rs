//! SM3 (GB/T 32905) and HMAC-SM3 (RFC 2104 with SM3, 64-byte blocks):
//! `gmcrypt`'s, whose HMAC keeps the inner and outer states of each key
//! (two compressions fewer per message).

pub use gmcrypt::sm3::{hmac_sm3, sm3, HmacSm3};

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
            assert_eq!(h.clone().mac(&[m]), want);
        }
        assert_ne!(hmac_sm3(b"a", b"m"), hmac_sm3(b"b", b"m"));
    }
}
