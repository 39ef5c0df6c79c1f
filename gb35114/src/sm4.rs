//! SM4 (GB/T 32907) block cipher and the modes the profiles use.
//!
//! The block function and the modes are `gmcrypt`'s (SIMD with runtime
//! dispatch: GFNI/AES-NI with AVX2 or AVX-512 on x86_64, SM4 instructions
//! or NEON on aarch64, tables elsewhere); this module keeps the profiles'
//! API and agrees with `openssl enc -sm4-ofb` / `-sm4-ctr` / `-sm4-ecb
//! -nopad` (checked by the tests against the machine's openssl).

pub use gmcrypt::sm4::{Impl, OfbUnit};

use crate::rfc3711::BlockCipher128;

/// An SM4 key schedule. `Debug` shows the key check value and the
/// implementation, never the key.
#[derive(Clone)]
pub struct Sm4 {
    inner: gmcrypt::sm4::Sm4,
}

impl Sm4 {
    /// Expands the round keys of `key` (the process's implementation:
    /// [`gmcrypt::sm4::selected`]).
    pub fn new(key: &[u8; 16]) -> Sm4 {
        Sm4 {
            inner: gmcrypt::sm4::Sm4::new(key),
        }
    }

    /// With a given implementation (tests, benchmarks).
    pub fn with_impl(key: &[u8; 16], imp: Impl) -> Result<Sm4, gmcrypt::sm4::Unavailable> {
        gmcrypt::sm4::Sm4::with_impl(key, imp).map(|inner| Sm4 { inner })
    }

    /// The implementation in use.
    pub fn implementation(&self) -> Impl {
        self.inner.implementation()
    }

    /// Encrypts one block in place.
    #[inline]
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        self.inner.encrypt_block(block)
    }

    /// Decrypts one block in place.
    #[inline]
    pub fn decrypt_block(&self, block: &mut [u8; 16]) {
        self.inner.decrypt_block(block)
    }

    /// OFB over several units (the slices of an access unit) in parallel lanes.
    pub fn ofb_lanes(&self, units: &mut [OfbUnit<'_>]) {
        self.inner.ofb_lanes(units)
    }

    /// Short key check value for listing keys without revealing them:
    /// first 4 bytes of SM4-ECB(key, 16 zero bytes), as 8 lowercase hex chars.
    pub fn check_value(&self) -> String {
        let mut b = [0u8; 16];
        self.encrypt_block(&mut b);
        hex4(&b)
    }
}

pub(crate) fn hex4(b: &[u8]) -> String {
    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

impl std::fmt::Debug for Sm4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm4")
            .field("check_value", &self.check_value())
            .field("imp", &self.implementation())
            .finish()
    }
}

impl BlockCipher128 for Sm4 {
    #[inline]
    fn encrypt_block(&self, block: &mut [u8; 16]) {
        Sm4::encrypt_block(self, block)
    }
}

/// OFB keystream XORed into data (encryption == decryption); same as `openssl enc -sm4-ofb`.
pub fn ofb_apply(c: &Sm4, iv: &[u8; 16], data: &mut [u8]) {
    c.inner.ofb_apply(iv, data)
}

/// OFB over units of several keys (streams) in parallel lanes: `units[i]`
/// under `keys[i]`.
pub fn ofb_lanes_keyed(keys: &[&Sm4], units: &mut [OfbUnit<'_>]) {
    let inner: Vec<&gmcrypt::sm4::Sm4> = keys.iter().map(|k| &k.inner).collect();
    gmcrypt::sm4::ofb_lanes_keyed(&inner, units)
}

/// CTR with a 128-bit big-endian counter; same as `openssl enc -sm4-ctr`
/// and RFC 3711's counter mode. Blocks go through the SIMD block function
/// 16 at a time.
pub fn ctr_apply(c: &Sm4, iv: &[u8; 16], data: &mut [u8]) {
    c.inner.ctr_apply(iv, data)
}

/// ECB without padding; Err if len % 16 != 0 (data untouched then).
pub fn ecb_encrypt(c: &Sm4, data: &mut [u8]) -> Result<(), crate::Error> {
    let blocks = whole_blocks(data)?;
    c.inner.encrypt_blocks(blocks);
    Ok(())
}

/// ECB decryption without padding; Err if len % 16 != 0 (data untouched then).
pub fn ecb_decrypt(c: &Sm4, data: &mut [u8]) -> Result<(), crate::Error> {
    let blocks = whole_blocks(data)?;
    c.inner.decrypt_blocks(blocks);
    Ok(())
}

fn whole_blocks(data: &mut [u8]) -> Result<&mut [[u8; 16]], crate::Error> {
    let len = data.len();
    match data.as_chunks_mut::<16>() {
        (blocks, []) => Ok(blocks),
        _ => Err(crate::Error::NotBlockAligned { len }),
    }
}

/// VEK = SM4-ECB-Decrypt(VKEK, wrapped).
pub fn unwrap_key(vkek: &[u8; 16], wrapped: &[u8; 16]) -> [u8; 16] {
    let mut b = *wrapped;
    Sm4::new(vkek).decrypt_block(&mut b);
    b
}

/// wrapped = SM4-ECB-Encrypt(VKEK, VEK), the inverse of [`unwrap_key`].
pub fn wrap_key(vkek: &[u8; 16], vek: &[u8; 16]) -> [u8; 16] {
    let mut b = *vek;
    Sm4::new(vkek).encrypt_block(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32,
        0x10,
    ];

    #[test]
    fn check_value_and_debug_hide_the_key() {
        let c = Sm4::new(&K);
        // openssl enc -sm4-ecb -nopad -K 0123..3210 of 16 zero bytes = 2677f46b09c1...
        assert_eq!(c.check_value(), "2677f46b");
        assert_eq!(c.check_value().len(), 8);
        let dbg = format!("{c:?}");
        assert!(dbg.contains(&c.check_value()));
        assert!(!dbg.contains("0123"), "{dbg}");
        assert_eq!(c.clone().check_value(), c.check_value());
    }

    #[test]
    fn ofb_streams_like_blockwise_ofb() {
        let c = Sm4::new(&K);
        let iv = [7u8; 16];
        let mut data: Vec<u8> = (0..53u8).collect();
        ofb_apply(&c, &iv, &mut data);
        // reference: O_j = E(O_{j-1}), C = P xor O
        let mut o = iv;
        for (j, chunk) in (0..53u8).collect::<Vec<_>>().chunks(16).enumerate() {
            c.encrypt_block(&mut o);
            for (k, p) in chunk.iter().enumerate() {
                assert_eq!(data[j * 16 + k], p ^ o[k]);
            }
        }
        ofb_apply(&c, &iv, &mut data);
        assert_eq!(data, (0..53u8).collect::<Vec<_>>());
    }

    #[test]
    fn ecb_rejects_partial_blocks_and_round_trips() {
        let c = Sm4::new(&K);
        let mut d = [1u8; 17];
        assert_eq!(
            ecb_encrypt(&c, &mut d),
            Err(crate::Error::NotBlockAligned { len: 17 })
        );
        assert_eq!(d, [1u8; 17]);
        assert!(ecb_decrypt(&c, &mut d[..15]).is_err());
        let mut d = [3u8; 32];
        ecb_encrypt(&c, &mut d).unwrap();
        assert_ne!(d, [3u8; 32]);
        assert_eq!(d[..16], d[16..]);
        ecb_decrypt(&c, &mut d).unwrap();
        assert_eq!(d, [3u8; 32]);
        let mut empty: [u8; 0] = [];
        assert!(ecb_encrypt(&c, &mut empty).is_ok());
    }

    #[test]
    fn wrap_unwrap() {
        let vkek = [9u8; 16];
        let vek = [0x42u8; 16];
        let w = wrap_key(&vkek, &vek);
        assert_ne!(w, vek);
        assert_eq!(unwrap_key(&vkek, &w), vek);
        let mut b = w;
        Sm4::new(&vkek).decrypt_block(&mut b);
        assert_eq!(b, vek);
    }
}
