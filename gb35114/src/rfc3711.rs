//! RFC 3711 counter mode (section 4.1.1) and key derivation (section 4.3),
//! written over any 128-bit block cipher. `srtp-sm4` runs them with SM4;
//! the tests run them with AES-128 against RFC 3711 Appendix B.2 and B.3.

/// A 128-bit block cipher in the forward (encryption) direction.
pub trait BlockCipher128 {
    /// Encrypts one block in place.
    fn encrypt_block(&self, block: &mut [u8; 16]);
}

impl<C: BlockCipher128 + ?Sized> BlockCipher128 for &C {
    fn encrypt_block(&self, block: &mut [u8; 16]) {
        (**self).encrypt_block(block)
    }
}

/// XORs `a` into `b` (16 bytes) as two words; the compiler keeps it in registers.
#[inline(always)]
pub(crate) fn xor16(b: &mut [u8; 16], a: &[u8; 16]) {
    *b = (u128::from_ne_bytes(*b) ^ u128::from_ne_bytes(*a)).to_ne_bytes();
}

/// XORs `ks` into the front of `data` (`data` at most 16 bytes).
#[inline(always)]
pub(crate) fn xor_partial(data: &mut [u8], ks: &[u8; 16]) {
    for (d, k) in data.iter_mut().zip(ks.iter()) {
        *d ^= *k;
    }
}

/// Counter mode: the keystream is `E(iv) || E(iv + 1 mod 2^128) || ...`
/// (a 128-bit big-endian counter), XORed into `data`. Encryption and
/// decryption are the same operation. This is RFC 3711 AES-CM, NIST CTR and
/// `openssl enc -*-ctr`.
pub fn cm_apply<C: BlockCipher128 + ?Sized>(c: &C, iv: &[u8; 16], data: &mut [u8]) {
    let mut counter = u128::from_be_bytes(*iv);
    let (blocks, rest) = data.as_chunks_mut::<16>();
    for block in blocks {
        let mut ks = counter.to_be_bytes();
        c.encrypt_block(&mut ks);
        xor16(block, &ks);
        counter = counter.wrapping_add(1);
    }
    if !rest.is_empty() {
        let mut ks = counter.to_be_bytes();
        c.encrypt_block(&mut ks);
        xor_partial(rest, &ks);
    }
}

/// SRTP counter-mode IV (RFC 3711 4.1.1):
/// `IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)`, with `i` the 48-bit
/// packet index (higher bits of `index` are ignored).
pub fn srtp_iv(session_salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(session_salt);
    let ssrc = ssrc.to_be_bytes();
    for (d, s) in iv[4..8].iter_mut().zip(ssrc.iter()) {
        *d ^= *s;
    }
    let idx = (index & 0xffff_ffff_ffff).to_be_bytes(); // 8 bytes, top 2 are zero
    for (d, s) in iv[8..14].iter_mut().zip(idx[2..8].iter()) {
        *d ^= *s;
    }
    iv
}

/// Key derivation label (RFC 3711 4.3.2): SRTP encryption key.
pub const LABEL_RTP_ENCRYPTION: u8 = 0x00;
/// Key derivation label: SRTP authentication key.
pub const LABEL_RTP_AUTH: u8 = 0x01;
/// Key derivation label: SRTP salting key.
pub const LABEL_RTP_SALT: u8 = 0x02;

/// RFC 3711 4.3.1 key derivation: fills `out` with
/// `PRF_n(k_master, x)`, the counter-mode keystream of `master` (a cipher
/// keyed with the master key) from `IV = x * 2^16`, where
/// `x = key_id XOR master_salt`, `key_id = label || r` (56 bits, right
/// aligned against the 112-bit salt) and `r = index DIV key_derivation_rate`
/// (48 bits; 0 when the rate is 0, as in `srtp-sm4`).
pub fn kdf<C: BlockCipher128 + ?Sized>(
    master: &C,
    master_salt: &[u8; 14],
    label: u8,
    r: u64,
    out: &mut [u8],
) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    // key_id occupies bytes 7..14 of the salt: label at 7, r (48 bits) at 8..14.
    iv[7] ^= label;
    let r = (r & 0xffff_ffff_ffff).to_be_bytes();
    for (d, s) in iv[8..14].iter_mut().zip(r[2..8].iter()) {
        *d ^= *s;
    }
    out.fill(0);
    cm_apply(master, &iv, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy "cipher" (XOR with a constant) to test the plumbing, not the crypto.
    struct Xor(u8);
    impl BlockCipher128 for Xor {
        fn encrypt_block(&self, block: &mut [u8; 16]) {
            for b in block.iter_mut() {
                *b ^= self.0;
            }
        }
    }

    #[test]
    fn counter_is_128_bit_big_endian_and_wraps() {
        let iv = [0xffu8; 16];
        let mut data = [0u8; 40];
        cm_apply(&Xor(0), &iv, &mut data);
        assert_eq!(&data[..16], &[0xff; 16]);
        assert_eq!(&data[16..32], &[0u8; 16]); // wrapped to zero
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(&data[32..40], &one[..8]);
    }

    #[test]
    fn iv_layout() {
        let salt = [0u8; 14];
        let iv = srtp_iv(&salt, 0x1234_5678, 0x9abc_def0_0203);
        assert_eq!(
            iv,
            [0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x02, 0x03, 0, 0]
        );
        // bits above 48 are ignored
        assert_eq!(srtp_iv(&salt, 0, 1 << 48), [0u8; 16]);
    }
}
