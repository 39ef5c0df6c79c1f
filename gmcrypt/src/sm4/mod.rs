//! SM4 (GB/T 32907): the block function in several implementations
//! ([`Impl`]), picked at run time, and the modes over many blocks at once:
//! ECB, CTR (128-bit big-endian counter, as `openssl enc -sm4-ctr` and the
//! counter mode of RFC 3711) and OFB, one stream or many streams in
//! parallel lanes ([`Sm4::ofb_lanes`], [`ofb_lanes_keyed`]).
//!
//! # The S-box on AES-NI and GFNI
//!
//! The SM4 S-box is `S(x) = A·inv(A·x ⊕ 0xD3) ⊕ 0xD3`, `inv` the inverse in
//! GF(2^8) modulo x^8+x^7+x^6+x^5+x^4+x^2+1 (0x1F5) and `A` the circulant
//! 8x8 bit matrix whose row i is 0xA7 rotated left by i (Liu, Wang et al.,
//! "Algebraic structure of the SM4 S-box"; Saarinen's sm4ni, MIT, uses the
//! same idea). The field is isomorphic to AES's (modulo 0x11B): with
//! `T` mapping `x^i` to `β^i`, β = 0x23 a root of 0x1F5 in AES's field,
//! `inv_sm4 = T^-1·inv_aes·T`, so
//!
//! `S(x) = (A·T^-1)·inv_aes((T·A)·x ⊕ T·0xD3) ⊕ 0xD3`.
//!
//! GFNI computes that with two instructions (`gf2p8affineqb` with `T·A`,
//! then `gf2p8affineinvqb` with `A·T^-1`). AES-NI's `aesenclast` with a
//! zero round key is `ShiftRows(M_aes·inv_aes(x) ⊕ 0x63)`: the input is
//! pre-shuffled by InvShiftRows, and the affine maps before and after are
//! two 16-entry nibble tables each (`pshufb`). The constants were derived
//! for this crate (`tests::affine_constants_give_the_sbox` rebuilds the
//! S-box from them; `tests::derive_the_isomorphism` derives them again).
//!
//! The SIMD kernels hold blocks transposed (one register per state word,
//! one lane per block), so 8 (AVX2) or 16 (AVX-512) blocks go through the
//! 32 rounds together. The portable implementation uses four 1 KiB
//! combined S-box + L tables; it is not constant-time (cache timing), the
//! SIMD ones are.

mod portable;

use crate::arch;

/// The S-box of GB/T 32907.
pub(crate) const SBOX: [u8; 256] = [
    0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
    0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
    0x9c, 0x42, 0x50, 0xf4, 0x91, 0xef, 0x98, 0x7a, 0x33, 0x54, 0x0b, 0x43, 0xed, 0xcf, 0xac, 0x62,
    0xe4, 0xb3, 0x1c, 0xa9, 0xc9, 0x08, 0xe8, 0x95, 0x80, 0xdf, 0x94, 0xfa, 0x75, 0x8f, 0x3f, 0xa6,
    0x47, 0x07, 0xa7, 0xfc, 0xf3, 0x73, 0x17, 0xba, 0x83, 0x59, 0x3c, 0x19, 0xe6, 0x85, 0x4f, 0xa8,
    0x68, 0x6b, 0x81, 0xb2, 0x71, 0x64, 0xda, 0x8b, 0xf8, 0xeb, 0x0f, 0x4b, 0x70, 0x56, 0x9d, 0x35,
    0x1e, 0x24, 0x0e, 0x5e, 0x63, 0x58, 0xd1, 0xa2, 0x25, 0x22, 0x7c, 0x3b, 0x01, 0x21, 0x78, 0x87,
    0xd4, 0x00, 0x46, 0x57, 0x9f, 0xd3, 0x27, 0x52, 0x4c, 0x36, 0x02, 0xe7, 0xa0, 0xc4, 0xc8, 0x9e,
    0xea, 0xbf, 0x8a, 0xd2, 0x40, 0xc7, 0x38, 0xb5, 0xa3, 0xf7, 0xf2, 0xce, 0xf9, 0x61, 0x15, 0xa1,
    0xe0, 0xae, 0x5d, 0xa4, 0x9b, 0x34, 0x1a, 0x55, 0xad, 0x93, 0x32, 0x30, 0xf5, 0x8c, 0xb1, 0xe3,
    0x1d, 0xf6, 0xe2, 0x2e, 0x82, 0x66, 0xca, 0x60, 0xc0, 0x29, 0x23, 0xab, 0x0d, 0x53, 0x4e, 0x6f,
    0xd5, 0xdb, 0x37, 0x45, 0xde, 0xfd, 0x8e, 0x2f, 0x03, 0xff, 0x6a, 0x72, 0x6d, 0x6c, 0x5b, 0x51,
    0x8d, 0x1b, 0xaf, 0x92, 0xbb, 0xdd, 0xbc, 0x7f, 0x11, 0xd9, 0x5c, 0x41, 0x1f, 0x10, 0x5a, 0xd8,
    0x0a, 0xc1, 0x31, 0x88, 0xa5, 0xcd, 0x7b, 0xbd, 0x2d, 0x74, 0xd0, 0x12, 0xb8, 0xe5, 0xb4, 0xb0,
    0x89, 0x69, 0x97, 0x4a, 0x0c, 0x96, 0x77, 0x7e, 0x65, 0xb9, 0xf1, 0x09, 0xc5, 0x6e, 0xc6, 0x84,
    0x18, 0xf0, 0x7d, 0xec, 0x3a, 0xdc, 0x4d, 0x20, 0x79, 0xee, 0x5f, 0x3e, 0xd7, 0xcb, 0x39, 0x48,
];

/// Rows of `T·A` (row i gives output bit i) and its constant `T·0xD3`: the
/// affine map before the AES-field inversion.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const PRE_ROWS: [u8; 8] = [0x4c, 0x28, 0x7d, 0xb9, 0x1a, 0x22, 0x50, 0x5d];
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const PRE_CONST: u8 = 0x3e;
/// Rows of `A·T^-1` and the constant 0xD3: the affine map after it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const POST_ROWS: [u8; 8] = [0xf3, 0xab, 0x34, 0xa9, 0x74, 0xa6, 0xb5, 0x89];
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const POST_CONST: u8 = 0xd3;

/// `PRE_ROWS` as the 8x8 matrix operand of `gf2p8affineqb` (row i in byte 7-i).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const fn gfni_matrix(rows: [u8; 8]) -> u64 {
    let mut q = 0u64;
    let mut i = 0;
    while i < 8 {
        q |= (rows[i] as u64) << (8 * (7 - i));
        i += 1;
    }
    q
}

/// Nibble tables of the affine maps around AES-NI's S-box: `f(x) =
/// LO[x & 15] ^ HI[x >> 4]`. PRE: `T·A·x ⊕ T·0xD3`. POST: `A·T^-1·M_aes^-1`
/// applied to `aes_sbox(y)`, with the 0x63 of the AES S-box and the 0xD3 of
/// SM4's folded in.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const AESNI_PRE_LO: [u8; 16] = [
    0x3e, 0xb2, 0x0e, 0x82, 0xbb, 0x37, 0x8b, 0x07, 0xa1, 0x2d, 0x91, 0x1d, 0x24, 0xa8, 0x14, 0x98,
];
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const AESNI_PRE_HI: [u8; 16] = [
    0x00, 0xdc, 0x2e, 0xf2, 0xc5, 0x19, 0xeb, 0x37, 0x08, 0xd4, 0x26, 0xfa, 0xcd, 0x11, 0xe3, 0x3f,
];
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const AESNI_POST_LO: [u8; 16] = [
    0x6c, 0xd4, 0xa6, 0x1e, 0x52, 0xea, 0x98, 0x20, 0x0b, 0xb3, 0xc1, 0x79, 0x35, 0x8d, 0xff, 0x47,
];
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const AESNI_POST_HI: [u8; 16] = [
    0x00, 0xe0, 0x50, 0xb0, 0x9d, 0x7d, 0xcd, 0x2d, 0xc0, 0x20, 0x90, 0x70, 0x5d, 0xbd, 0x0d, 0xed,
];

const FK: [u32; 4] = [0xa3b1bac6, 0x56aa3350, 0x677d9197, 0xb27022dc];

const fn ck() -> [u32; 32] {
    let mut ck = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        let mut w = 0u32;
        let mut j = 0;
        while j < 4 {
            let b = ((4 * i + j) * 7 % 256) as u32;
            w = (w << 8) | b;
            j += 1;
        }
        ck[i] = w;
        i += 1;
    }
    ck
}
const CK: [u32; 32] = ck();

#[inline(always)]
pub(crate) fn tau(a: u32) -> u32 {
    let b = a.to_be_bytes();
    u32::from_be_bytes([
        SBOX[b[0] as usize],
        SBOX[b[1] as usize],
        SBOX[b[2] as usize],
        SBOX[b[3] as usize],
    ])
}

/// Round keys of `key` (GB/T 32907 section 7.3), encryption order.
pub(crate) fn expand_key(key: &[u8; 16]) -> [u32; 32] {
    let mut k = [0u32; 4];
    for (i, w) in k.iter_mut().enumerate() {
        *w = u32::from_be_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]])
            ^ FK[i];
    }
    let mut rk = [0u32; 32];
    for i in 0..32 {
        let t = tau(k[(i + 1) % 4] ^ k[(i + 2) % 4] ^ k[(i + 3) % 4] ^ CK[i]);
        let n = k[i % 4] ^ t ^ t.rotate_left(13) ^ t.rotate_left(23);
        k[i % 4] = n;
        rk[i] = n;
    }
    rk
}

/// An SM4 implementation. [`Impl::ALL`] lists them, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impl {
    /// x86_64: GFNI affine instructions on 512-bit registers, 16 blocks.
    GfniAvx512,
    /// x86_64: GFNI on 256-bit registers, 8 blocks.
    GfniAvx2,
    /// x86_64: the AES S-box of VAES on 256-bit registers, 8 blocks.
    VaesAvx2,
    /// x86_64: the AES S-box of AES-NI (two 128-bit halves), 8 blocks.
    AesniAvx2,
    /// aarch64: the SM4 instructions (`sm4e`).
    Sm4Ce,
    /// aarch64: NEON table lookups (`tbl`), 4 blocks.
    Neon,
    /// Any CPU: combined S-box/L tables.
    Portable,
}

impl Impl {
    /// Every implementation, in order of preference.
    pub const ALL: [Impl; 7] = [
        Impl::GfniAvx512,
        Impl::GfniAvx2,
        Impl::VaesAvx2,
        Impl::AesniAvx2,
        Impl::Sm4Ce,
        Impl::Neon,
        Impl::Portable,
    ];

    /// The name `GMCRYPT_SM4` and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Impl::GfniAvx512 => "gfni-avx512",
            Impl::GfniAvx2 => "gfni-avx2",
            Impl::VaesAvx2 => "vaes-avx2",
            Impl::AesniAvx2 => "aesni-avx2",
            Impl::Sm4Ce => "sm4-ce",
            Impl::Neon => "neon",
            Impl::Portable => "portable",
        }
    }

    /// The implementation called `name`.
    pub fn from_name(name: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Why this CPU cannot run it (`None`: it can).
    pub fn unavailable(self) -> Option<&'static str> {
        arch::sm4_unavailable(self)
    }

    /// The fastest implementation this CPU runs.
    pub fn best() -> Impl {
        Impl::ALL
            .into_iter()
            .find(|i| i.unavailable().is_none())
            .unwrap_or(Impl::Portable)
    }

    /// Blocks one call processes at once (the best batch size for the modes).
    pub fn width(self) -> usize {
        match self {
            Impl::GfniAvx512 => 16,
            Impl::GfniAvx2 | Impl::VaesAvx2 | Impl::AesniAvx2 => 8,
            Impl::Sm4Ce | Impl::Neon | Impl::Portable => 4,
        }
    }
}

impl std::fmt::Display for Impl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which implementation [`Sm4::new`] uses in this process, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The implementation.
    pub imp: Impl,
    /// What chose it: "detected", "GMCRYPT_SM4=<name>", or why the forced
    /// name was not taken.
    pub reason: String,
}

/// The process-wide default: `GMCRYPT_SM4` if it names an implementation
/// this CPU runs, else [`Impl::best`]. Read once.
pub fn selected() -> &'static Selection {
    static SEL: std::sync::OnceLock<Selection> = std::sync::OnceLock::new();
    SEL.get_or_init(|| select(std::env::var("GMCRYPT_SM4").ok().as_deref()))
}

fn select(var: Option<&str>) -> Selection {
    let (imp, reason) = crate::choose(
        "GMCRYPT_SM4",
        var,
        Impl::best(),
        Impl::from_name,
        Impl::unavailable,
    );
    Selection { imp, reason }
}

/// The implementation is not available on this CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The implementation asked for.
    pub imp: Impl,
    /// Why it cannot run here.
    pub why: &'static str,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SM4 implementation {} unavailable: {}",
            self.imp, self.why
        )
    }
}

impl std::error::Error for Unavailable {}

/// An SM4 key: round keys for both directions and the implementation.
/// `Debug` prints neither the key nor the round keys.
#[derive(Clone)]
pub struct Sm4 {
    enc: [u32; 32],
    dec: [u32; 32],
    imp: Impl,
}

impl std::fmt::Debug for Sm4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm4")
            .field("imp", &self.imp)
            .finish_non_exhaustive()
    }
}

/// Blocks gathered per call in the modes (a multiple of every width; two
/// chains of the widest kernel).
const BATCH: usize = 32;

impl Sm4 {
    /// The key schedule of `key`, with the process's implementation ([`selected`]).
    pub fn new(key: &[u8; 16]) -> Sm4 {
        Sm4::build(key, selected().imp)
    }

    /// The key schedule of `key` with a given implementation.
    pub fn with_impl(key: &[u8; 16], imp: Impl) -> Result<Sm4, Unavailable> {
        match imp.unavailable() {
            Some(why) => Err(Unavailable { imp, why }),
            None => Ok(Sm4::build(key, imp)),
        }
    }

    fn build(key: &[u8; 16], imp: Impl) -> Sm4 {
        let enc = expand_key(key);
        let mut dec = enc;
        dec.reverse();
        Sm4 { enc, dec, imp }
    }

    /// The implementation this key uses.
    pub fn implementation(&self) -> Impl {
        self.imp
    }

    /// Encrypts blocks in place (ECB), as many at once as the implementation takes.
    #[inline]
    pub fn encrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        run(self.imp, &self.enc, blocks)
    }

    /// Decrypts blocks in place (ECB).
    #[inline]
    pub fn decrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        run(self.imp, &self.dec, blocks)
    }

    /// Encrypts one block.
    #[inline]
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        portable::block(&self.enc, block)
    }

    /// Decrypts one block.
    #[inline]
    pub fn decrypt_block(&self, block: &mut [u8; 16]) {
        portable::block(&self.dec, block)
    }

    /// CTR: the keystream is E(iv), E(iv+1), ... with `iv` a 128-bit
    /// big-endian counter (wrapping), XORed into `data` (encryption ==
    /// decryption). Same as `openssl enc -sm4-ctr` and RFC 3711's AES-CM.
    pub fn ctr_apply(&self, iv: &[u8; 16], data: &mut [u8]) {
        let mut ctr = u128::from_be_bytes(*iv);
        let mut ks = [[0u8; 16]; BATCH];
        for chunk in data.chunks_mut(16 * BATCH) {
            let n = chunk.len().div_ceil(16);
            for b in ks.iter_mut().take(n) {
                *b = ctr.to_be_bytes();
                ctr = ctr.wrapping_add(1);
            }
            self.encrypt_blocks(&mut ks[..n]);
            xor_keystream(chunk, &ks[..n]);
        }
    }

    /// OFB over one stream (sequential: each block needs the previous one).
    /// Same as `openssl enc -sm4-ofb`; encryption == decryption.
    pub fn ofb_apply(&self, iv: &[u8; 16], data: &mut [u8]) {
        let mut ks = *iv;
        for chunk in data.chunks_mut(16) {
            self.encrypt_block(&mut ks);
            for (d, k) in chunk.iter_mut().zip(ks) {
                *d ^= k;
            }
        }
    }

    /// OFB over several independent units (for example the slices of an
    /// access unit), each with its own IV, in parallel lanes: one call of
    /// the block function advances every unfinished unit by one block.
    pub fn ofb_lanes(&self, units: &mut [OfbUnit<'_>]) {
        ofb_run(units, |_| (), |_, ks| self.encrypt_blocks(ks));
    }
}

/// One OFB unit of [`Sm4::ofb_lanes`] / [`ofb_lanes_keyed`].
#[derive(Debug)]
pub struct OfbUnit<'a> {
    /// Its IV.
    pub iv: [u8; 16],
    /// Its bytes, XORed with the keystream in place.
    pub data: &'a mut [u8],
}

/// OFB over units of different keys (several streams) in parallel lanes.
/// Units of one key go through [`Sm4::ofb_lanes`] together; a unit's key
/// is `keys[i]` for `units[i]`. Panics if the lengths differ.
pub fn ofb_lanes_keyed(keys: &[&Sm4], units: &mut [OfbUnit<'_>]) {
    assert_eq!(keys.len(), units.len(), "one key per unit");
    if units.is_empty() {
        return;
    }
    let imp = keys[0].imp;
    if keys
        .iter()
        .all(|k| std::ptr::eq(*k, keys[0]) || k.enc == keys[0].enc)
    {
        return keys[0].ofb_lanes(units);
    }
    // Per-lane round keys: lane l of a group is its unit's key.
    ofb_run(
        units,
        |group| {
            let mut rks = [[0u32; 32]; BATCH];
            for (l, &u) in group.iter().enumerate() {
                rks[l] = keys[u].enc;
            }
            rks
        },
        |rks, ks| run_keyed(imp, &rks[..ks.len()], ks),
    );
}

/// OFB in lanes: the units in groups of up to BATCH, longest first so the
/// live lanes of a group are always a prefix; `prepare` makes what a group
/// needs (its round keys), `encrypt` advances the live lanes by one block.
fn ofb_run<E>(
    units: &mut [OfbUnit<'_>],
    mut prepare: impl FnMut(&[usize]) -> E,
    mut encrypt: impl FnMut(&E, &mut [[u8; 16]]),
) {
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(units[i].data.len()));
    for group in order.chunks(BATCH) {
        let prepared = prepare(group);
        let mut ks = [[0u8; 16]; BATCH];
        for (l, &u) in group.iter().enumerate() {
            ks[l] = units[u].iv;
        }
        let longest = units[group[0]].data.len();
        let mut off = 0;
        while off < longest {
            let live = group
                .iter()
                .take_while(|&&u| units[u].data.len() > off)
                .count();
            encrypt(&prepared, &mut ks[..live]);
            for (l, &u) in group[..live].iter().enumerate() {
                let d = &mut units[u].data;
                let end = (off + 16).min(d.len());
                for (x, k) in d[off..end].iter_mut().zip(ks[l]) {
                    *x ^= k;
                }
            }
            off += 16;
        }
    }
}

#[inline]
fn xor_keystream(data: &mut [u8], ks: &[[u8; 16]]) {
    let (blocks, rest) = data.as_chunks_mut::<16>();
    for (b, k) in blocks.iter_mut().zip(ks) {
        let x = u128::from_ne_bytes(*b) ^ u128::from_ne_bytes(*k);
        *b = x.to_ne_bytes();
    }
    if !rest.is_empty() {
        let k = &ks[blocks.len()];
        for (d, k) in rest.iter_mut().zip(k) {
            *d ^= k;
        }
    }
}

/// The block function of `imp` over `blocks`, one round-key set.
#[inline]
fn run(imp: Impl, rk: &[u32; 32], blocks: &mut [[u8; 16]]) {
    if imp != Impl::Portable && arch::sm4_blocks(imp, rk, blocks) {
        return;
    }
    portable::blocks(rk, blocks)
}

/// Block i under round keys `rks[i]`.
#[inline]
fn run_keyed(imp: Impl, rks: &[[u32; 32]], blocks: &mut [[u8; 16]]) {
    if imp != Impl::Portable && arch::sm4_blocks_keyed(imp, rks, blocks) {
        return;
    }
    portable::blocks_keyed(rks, blocks)
}

#[cfg(test)]
mod tests;
