//! aarch64 kernels: SM4 with the ARMv8.2 SM4 instructions (`sm4e`), SM4
//! with plain NEON table lookups (`tbl`), and the SM3 compression function
//! with the ARMv8.2 SM3 instructions.
//!
//! The SM3/SM4 intrinsics of `core::arch::aarch64` (`vsm4eq_u32`,
//! `vsm3tt1aq_u32`, ...) are still unstable (`stdarch_neon_sm4`), so those
//! instructions are emitted with `asm!` from functions compiled with
//! `#[target_feature(enable = "sm4")]`. Rust's `sm4` feature is FEAT_SM3
//! and FEAT_SM4 together (there is no separate `sm3` feature), so both the
//! SM4 and the SM3 kernels are gated on `is_aarch64_feature_detected!("sm4")`.
//! The plain NEON intrinsics are stable and used directly.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::sm4::{Impl, SBOX};

const NO_SM4: &str = "CPU lacks the SM4 instructions (FEAT_SM4)";
const NO_SM3: &str = "CPU lacks the SM3 instructions (FEAT_SM3)";
const NO_NEON: &str = "CPU lacks NEON (Advanced SIMD)";

#[inline]
fn has_sm4() -> bool {
    std::arch::is_aarch64_feature_detected!("sm4")
}

#[inline]
fn has_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// Why `imp` cannot run on this CPU (`None`: it can).
pub(super) fn sm4_unavailable(imp: Impl) -> Option<&'static str> {
    match imp {
        Impl::Sm4Ce => (!has_sm4()).then_some(NO_SM4),
        Impl::Neon => (!has_neon()).then_some(NO_NEON),
        _ => Some("x86_64 only"),
    }
}

/// ECB over `blocks` with round keys `rk`; false (nothing touched) if this
/// CPU cannot run `imp` or `imp` is not an aarch64 kernel.
pub(super) fn sm4_blocks(imp: Impl, rk: &[u32; 32], blocks: &mut [[u8; 16]]) -> bool {
    match imp {
        Impl::Sm4Ce if has_sm4() => {
            // SAFETY: the CPU has FEAT_SM4 (and NEON), detected just above.
            unsafe { ce::blocks(rk, blocks) };
            true
        }
        Impl::Neon if has_neon() => {
            // SAFETY: the CPU has NEON, detected just above.
            unsafe { neon::blocks(rk, blocks) };
            true
        }
        _ => false,
    }
}

/// Block i under `rks[i]`; false (nothing touched) if this CPU cannot run
/// `imp` or `imp` is not an aarch64 kernel.
pub(super) fn sm4_blocks_keyed(imp: Impl, rks: &[[u32; 32]], blocks: &mut [[u8; 16]]) -> bool {
    if rks.len() != blocks.len() {
        return false;
    }
    match imp {
        Impl::Sm4Ce if has_sm4() => {
            // SAFETY: the CPU has FEAT_SM4 (and NEON), detected just above.
            unsafe { ce::blocks_keyed(rks, blocks) };
            true
        }
        Impl::Neon if has_neon() => {
            // SAFETY: the CPU has NEON, detected just above.
            unsafe { neon::blocks_keyed(rks, blocks) };
            true
        }
        _ => false,
    }
}

/// Why the SM3 kernel cannot run on this CPU (`None`: it can).
pub(super) fn sm3_unavailable() -> Option<&'static str> {
    (!has_sm4()).then_some(NO_SM3)
}

/// SM3 compression of `blocks` into `state`; false (nothing touched) if
/// this CPU lacks the SM3 instructions.
pub(super) fn sm3_compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) -> bool {
    if !has_sm4() {
        return false;
    }
    // SAFETY: the CPU has FEAT_SM3 (Rust's `sm4` feature), detected just above.
    unsafe { sm3ce::compress(state, blocks) };
    true
}

/// Loads a block as its four big-endian words, word i in lane i.
#[target_feature(enable = "neon")]
#[inline]
fn load_be(b: &[u8; 16]) -> uint32x4_t {
    // SAFETY: `b` is 16 readable bytes; `vld1q_u8` has no alignment requirement.
    let v = unsafe { vld1q_u8(b.as_ptr()) };
    vreinterpretq_u32_u8(vrev32q_u8(v))
}

/// Stores lane i as big-endian word i.
#[target_feature(enable = "neon")]
#[inline]
fn store_be(x: uint32x4_t, b: &mut [u8; 16]) {
    let v = vrev32q_u8(vreinterpretq_u8_u32(x));
    // SAFETY: `b` is 16 writable bytes; `vst1q_u8` has no alignment requirement.
    unsafe { vst1q_u8(b.as_mut_ptr(), v) }
}

/// 4x4 transpose of 32-bit lanes (its own inverse).
#[target_feature(enable = "neon")]
#[inline]
fn transpose(r: [uint32x4_t; 4]) -> [uint32x4_t; 4] {
    let t0 = vreinterpretq_u64_u32(vtrn1q_u32(r[0], r[1]));
    let t1 = vreinterpretq_u64_u32(vtrn2q_u32(r[0], r[1]));
    let t2 = vreinterpretq_u64_u32(vtrn1q_u32(r[2], r[3]));
    let t3 = vreinterpretq_u64_u32(vtrn2q_u32(r[2], r[3]));
    [
        vreinterpretq_u32_u64(vtrn1q_u64(t0, t2)),
        vreinterpretq_u32_u64(vtrn1q_u64(t1, t3)),
        vreinterpretq_u32_u64(vtrn2q_u64(t0, t2)),
        vreinterpretq_u32_u64(vtrn2q_u64(t1, t3)),
    ]
}

/// Loads 4 round keys `rk[i..i + 4]`, key j in lane j.
#[target_feature(enable = "neon")]
#[inline]
fn load_keys(rk: &[u32; 32], i: usize) -> uint32x4_t {
    let k: &[u32; 4] = rk[i..i + 4].try_into().unwrap();
    // SAFETY: `k` is 4 readable u32.
    unsafe { vld1q_u32(k.as_ptr()) }
}

/// SM4 with the `sm4e` instruction: one instruction runs 4 rounds of one
/// block (state words X_i..X_i+3 in lanes 0..3, round keys in lanes 0..3 of
/// the other operand); 8 blocks are kept in flight to hide its latency.
mod ce {
    use super::*;

    /// `sm4e x.4s, k.4s`: four rounds of the block in `x` with the round
    /// keys in `k`.
    #[target_feature(enable = "sm4")]
    #[inline]
    fn sm4e(mut x: uint32x4_t, k: uint32x4_t) -> uint32x4_t {
        // SAFETY: register-only instruction, available: this function is
        // compiled for (and only called on) CPUs with FEAT_SM4.
        unsafe {
            asm!(
                "sm4e {x:v}.4s, {k:v}.4s",
                x = inout(vreg) x,
                k = in(vreg) k,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        x
    }

    /// Loads a block for `sm4e` (big-endian words, word i in lane i).
    #[target_feature(enable = "neon")]
    #[inline]
    fn load(b: &[u8; 16]) -> uint32x4_t {
        load_be(b)
    }

    /// Stores X32..X35 (lanes 0..3) as the ciphertext (X35, X34, X33, X32)
    /// big-endian: reversing all 16 bytes of the register does both the
    /// word order and the byte order.
    #[target_feature(enable = "neon")]
    #[inline]
    fn store(x: uint32x4_t, b: &mut [u8; 16]) {
        let v = vrev64q_u8(vreinterpretq_u8_u32(x));
        let v = vextq_u8::<8>(v, v);
        // SAFETY: `b` is 16 writable bytes; `vst1q_u8` has no alignment requirement.
        unsafe { vst1q_u8(b.as_mut_ptr(), v) }
    }

    /// N blocks interleaved under one key schedule.
    #[target_feature(enable = "sm4")]
    #[inline]
    fn group<const N: usize>(k: &[uint32x4_t; 8], c: &mut [[u8; 16]; N]) {
        let mut x = [vdupq_n_u32(0); N];
        for i in 0..N {
            x[i] = load(&c[i]);
        }
        for kr in k {
            for xi in x.iter_mut() {
                *xi = sm4e(*xi, *kr);
            }
        }
        for i in 0..N {
            store(x[i], &mut c[i]);
        }
    }

    /// N blocks interleaved, block i under `rks[i]`.
    #[target_feature(enable = "sm4")]
    #[inline]
    fn group_keyed<const N: usize>(rks: &[[u32; 32]; N], c: &mut [[u8; 16]; N]) {
        let mut x = [vdupq_n_u32(0); N];
        for i in 0..N {
            x[i] = load(&c[i]);
        }
        for r in 0..8 {
            for i in 0..N {
                x[i] = sm4e(x[i], load_keys(&rks[i], 4 * r));
            }
        }
        for i in 0..N {
            store(x[i], &mut c[i]);
        }
    }

    #[target_feature(enable = "sm4")]
    pub(super) fn blocks(rk: &[u32; 32], blocks: &mut [[u8; 16]]) {
        let mut k = [vdupq_n_u32(0); 8];
        for (r, kr) in k.iter_mut().enumerate() {
            *kr = load_keys(rk, 4 * r);
        }
        let (eights, rest) = blocks.as_chunks_mut::<8>();
        for c in eights {
            group(&k, c);
        }
        let (fours, rest) = rest.as_chunks_mut::<4>();
        for c in fours {
            group(&k, c);
        }
        let (ones, _) = rest.as_chunks_mut::<1>();
        for c in ones {
            group(&k, c);
        }
    }

    #[target_feature(enable = "sm4")]
    pub(super) fn blocks_keyed(rks: &[[u32; 32]], blocks: &mut [[u8; 16]]) {
        let (kc, kr) = rks.as_chunks::<8>();
        let (bc, br) = blocks.as_chunks_mut::<8>();
        for (k, b) in kc.iter().zip(bc) {
            group_keyed(k, b);
        }
        let (kc, kr) = kr.as_chunks::<4>();
        let (bc, br) = br.as_chunks_mut::<4>();
        for (k, b) in kc.iter().zip(bc) {
            group_keyed(k, b);
        }
        let (kc, _) = kr.as_chunks::<1>();
        let (bc, _) = br.as_chunks_mut::<1>();
        for (k, b) in kc.iter().zip(bc) {
            group_keyed(k, b);
        }
    }
}

/// SM4 on plain NEON: 4 blocks transposed (register j holds word j of the
/// 4 blocks, one lane per block). The S-box is the 256-byte table in 16
/// q-registers, looked up 64 bytes at a time (`tbl` with 4 registers, then
/// `tbx` on the index minus 64, 128, 192: out-of-range indices leave the
/// byte unchanged), so no lookup depends on secret-indexed memory.
mod neon {
    use super::*;

    /// The S-box as four 64-byte `tbl` tables.
    struct Tables {
        sbox: [uint8x16x4_t; 4],
        rol8: uint8x16_t,
        rol24: uint8x16_t,
    }

    /// `tbl` indices rotating every 32-bit lane left by 8 / 24 bits.
    const ROL8: [u8; 16] = [3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14];
    const ROL24: [u8; 16] = [1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12];

    #[target_feature(enable = "neon")]
    #[inline]
    fn tables() -> Tables {
        // SAFETY: SBOX is 256 readable bytes, ROL8/ROL24 16 each; the loads
        // have no alignment requirement.
        unsafe {
            Tables {
                sbox: [
                    vld1q_u8_x4(SBOX.as_ptr()),
                    vld1q_u8_x4(SBOX.as_ptr().add(64)),
                    vld1q_u8_x4(SBOX.as_ptr().add(128)),
                    vld1q_u8_x4(SBOX.as_ptr().add(192)),
                ],
                rol8: vld1q_u8(ROL8.as_ptr()),
                rol24: vld1q_u8(ROL24.as_ptr()),
            }
        }
    }

    /// T(x) = L(tau(x)) on every lane.
    #[target_feature(enable = "neon")]
    #[inline]
    fn t(tb: &Tables, x: uint32x4_t) -> uint32x4_t {
        let i = vreinterpretq_u8_u32(x);
        let c64 = vdupq_n_u8(64);
        let mut s = vqtbl4q_u8(tb.sbox[0], i);
        let i = vsubq_u8(i, c64);
        s = vqtbx4q_u8(s, tb.sbox[1], i);
        let i = vsubq_u8(i, c64);
        s = vqtbx4q_u8(s, tb.sbox[2], i);
        let i = vsubq_u8(i, c64);
        s = vqtbx4q_u8(s, tb.sbox[3], i);
        // L(B) = B ^ B<<<2 ^ B<<<10 ^ B<<<18 ^ B<<<24
        //      = B ^ B<<<24 ^ (B ^ B<<<8 ^ B<<<16)<<<2.
        let b = vreinterpretq_u32_u8(s);
        let r8 = vreinterpretq_u32_u8(vqtbl1q_u8(s, tb.rol8));
        let r16 = vreinterpretq_u32_u16(vrev32q_u16(vreinterpretq_u16_u8(s)));
        let r24 = vreinterpretq_u32_u8(vqtbl1q_u8(s, tb.rol24));
        let m = veorq_u32(veorq_u32(b, r8), r16);
        let m2 = vsriq_n_u32::<30>(vshlq_n_u32::<2>(m), m);
        veorq_u32(veorq_u32(b, r24), m2)
    }

    /// 32 rounds on 4 transposed blocks; `rk(g)` gives the round keys of
    /// rounds 4g..4g+4, one vector per round (one lane per block).
    #[target_feature(enable = "neon")]
    #[inline]
    fn rounds(tb: &Tables, c: &mut [[u8; 16]; 4], mut rk: impl FnMut(usize) -> [uint32x4_t; 4]) {
        let [mut x0, mut x1, mut x2, mut x3] = transpose([
            load_be(&c[0]),
            load_be(&c[1]),
            load_be(&c[2]),
            load_be(&c[3]),
        ]);
        for g in 0..8 {
            let k = rk(g);
            x0 = veorq_u32(x0, t(tb, veorq_u32(veorq_u32(x1, x2), veorq_u32(x3, k[0]))));
            x1 = veorq_u32(x1, t(tb, veorq_u32(veorq_u32(x2, x3), veorq_u32(x0, k[1]))));
            x2 = veorq_u32(x2, t(tb, veorq_u32(veorq_u32(x3, x0), veorq_u32(x1, k[2]))));
            x3 = veorq_u32(x3, t(tb, veorq_u32(veorq_u32(x0, x1), veorq_u32(x2, k[3]))));
        }
        // Block b is (X35, X34, X33, X32): lane b of x3, x2, x1, x0.
        let out = transpose([x3, x2, x1, x0]);
        for (o, b) in out.into_iter().zip(c.iter_mut()) {
            store_be(o, b);
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) fn blocks(rk: &[u32; 32], blocks: &mut [[u8; 16]]) {
        let tb = tables();
        let keys = |g: usize| {
            [
                vdupq_n_u32(rk[4 * g]),
                vdupq_n_u32(rk[4 * g + 1]),
                vdupq_n_u32(rk[4 * g + 2]),
                vdupq_n_u32(rk[4 * g + 3]),
            ]
        };
        let (fours, rest) = blocks.as_chunks_mut::<4>();
        for c in fours {
            rounds(&tb, c, keys);
        }
        if !rest.is_empty() {
            let mut tmp = [[0u8; 16]; 4];
            tmp[..rest.len()].copy_from_slice(rest);
            rounds(&tb, &mut tmp, keys);
            rest.copy_from_slice(&tmp[..rest.len()]);
        }
    }

    /// Round keys 4g..4g+4 of the 4 lanes, one vector per round.
    #[target_feature(enable = "neon")]
    #[inline]
    fn lane_keys(k: &[[u32; 32]; 4], g: usize) -> [uint32x4_t; 4] {
        transpose([
            load_keys(&k[0], 4 * g),
            load_keys(&k[1], 4 * g),
            load_keys(&k[2], 4 * g),
            load_keys(&k[3], 4 * g),
        ])
    }

    #[target_feature(enable = "neon")]
    pub(super) fn blocks_keyed(rks: &[[u32; 32]], blocks: &mut [[u8; 16]]) {
        let tb = tables();
        let (kc, kr) = rks.as_chunks::<4>();
        let (bc, br) = blocks.as_chunks_mut::<4>();
        for (k, c) in kc.iter().zip(bc) {
            rounds(&tb, c, |g| lane_keys(k, g));
        }
        if !br.is_empty() {
            let n = br.len();
            let mut k = [[0u32; 32]; 4];
            k[..n].copy_from_slice(kr);
            let mut tmp = [[0u8; 16]; 4];
            tmp[..n].copy_from_slice(br);
            rounds(&tb, &mut tmp, |g| lane_keys(&k, g));
            br.copy_from_slice(&tmp[..n]);
        }
    }
}

/// SM3 compression with the SM3 instructions. Register layouts (Arm ARM):
/// `abcd` holds (D, C, B, A) in lanes 0..3 and `efgh` (H, G, F, E);
/// `sm3ss1` leaves SS1 in lane 3; `sm3tt1a/b` and `sm3tt2a/b` do one round
/// of the A..D and E..H halves with W'_j / W_j taken from a lane of the
/// message vector; `sm3partw1` + `sm3partw2` expand W_j..W_j+3 from
/// W_j-16..W_j-1.
mod sm3ce {
    use super::*;

    use crate::sm3::TJ;

    /// `sm3ss1`: lane 3 = ((A <<< 12) + E + (T_j <<< j)) <<< 7, others 0.
    #[target_feature(enable = "sm4")]
    #[inline]
    fn ss1(abcd: uint32x4_t, efgh: uint32x4_t, t: uint32x4_t) -> uint32x4_t {
        let out: uint32x4_t;
        // SAFETY: register-only instruction, available: this function is
        // compiled for (and only called on) CPUs with FEAT_SM3.
        unsafe {
            asm!(
                "sm3ss1 {d:v}.4s, {n:v}.4s, {m:v}.4s, {a:v}.4s",
                d = lateout(vreg) out,
                n = in(vreg) abcd,
                m = in(vreg) efgh,
                a = in(vreg) t,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        out
    }

    /// One round with the SM3 instruction `$ins` (tt1a/tt1b/tt2a/tt2b),
    /// message word from lane `I` of `w`.
    macro_rules! tt {
        ($name:ident, $ins:literal) => {
            #[target_feature(enable = "sm4")]
            #[inline]
            fn $name<const I: i32>(
                mut d: uint32x4_t,
                ss1: uint32x4_t,
                w: uint32x4_t,
            ) -> uint32x4_t {
                // SAFETY: register-only instruction, available: this
                // function is compiled for (and only called on) CPUs with
                // FEAT_SM3.
                unsafe {
                    asm!(
                        concat!($ins, " {d:v}.4s, {n:v}.4s, {m:v}.s[{i}]"),
                        d = inout(vreg) d,
                        n = in(vreg) ss1,
                        m = in(vreg) w,
                        i = const I,
                        options(pure, nomem, nostack, preserves_flags)
                    );
                }
                d
            }
        };
    }
    tt!(tt1a, "sm3tt1a");
    tt!(tt1b, "sm3tt1b");
    tt!(tt2a, "sm3tt2a");
    tt!(tt2b, "sm3tt2b");

    /// W_j..W_j+3 from w0 = W_j-16..W_j-13, w1 = W_j-12..W_j-9,
    /// w2 = W_j-8..W_j-5, w3 = W_j-4..W_j-1.
    #[target_feature(enable = "sm4")]
    #[inline]
    fn expand(w0: uint32x4_t, w1: uint32x4_t, w2: uint32x4_t, w3: uint32x4_t) -> uint32x4_t {
        let w9 = vextq_u32::<3>(w1, w2); // W_j-9..W_j-6
        let w6 = vextq_u32::<2>(w2, w3); // W_j-6..W_j-3
        let w13 = vextq_u32::<3>(w0, w1); // W_j-13..W_j-10
        let mut d = w0;
        // SAFETY: register-only instructions, available: this function is
        // compiled for (and only called on) CPUs with FEAT_SM3.
        unsafe {
            asm!(
                "sm3partw1 {d:v}.4s, {n:v}.4s, {m:v}.4s",
                "sm3partw2 {d:v}.4s, {n2:v}.4s, {m2:v}.4s",
                d = inout(vreg) d,
                n = in(vreg) w9,
                m = in(vreg) w3,
                n2 = in(vreg) w6,
                m2 = in(vreg) w13,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        d
    }

    /// Four rounds j..j+4 with W = `w` (W_j..W_j+3) and W' = `wp`.
    macro_rules! four {
        ($abcd:ident, $efgh:ident, $j:expr, $w:expr, $wp:expr, $t1:ident, $t2:ident) => {{
            let (w, wp, j) = ($w, $wp, $j);
            let s = ss1($abcd, $efgh, vdupq_n_u32(TJ[j]));
            $abcd = $t1::<0>($abcd, s, wp);
            $efgh = $t2::<0>($efgh, s, w);
            let s = ss1($abcd, $efgh, vdupq_n_u32(TJ[j + 1]));
            $abcd = $t1::<1>($abcd, s, wp);
            $efgh = $t2::<1>($efgh, s, w);
            let s = ss1($abcd, $efgh, vdupq_n_u32(TJ[j + 2]));
            $abcd = $t1::<2>($abcd, s, wp);
            $efgh = $t2::<2>($efgh, s, w);
            let s = ss1($abcd, $efgh, vdupq_n_u32(TJ[j + 3]));
            $abcd = $t1::<3>($abcd, s, wp);
            $efgh = $t2::<3>($efgh, s, w);
        }};
    }

    /// Reverses the 4 lanes.
    #[target_feature(enable = "neon")]
    #[inline]
    fn rev_lanes(v: uint32x4_t) -> uint32x4_t {
        let v = vrev64q_u32(v);
        vextq_u32::<2>(v, v)
    }

    #[target_feature(enable = "sm4")]
    pub(super) fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
        // SAFETY: `state` is 8 readable u32.
        let (s0, s1) = unsafe { (vld1q_u32(state.as_ptr()), vld1q_u32(state.as_ptr().add(4))) };
        let mut abcd = rev_lanes(s0);
        let mut efgh = rev_lanes(s1);
        for block in blocks {
            let (abcd0, efgh0) = (abcd, efgh);
            let b: &[[u8; 16]; 4] = block.as_chunks::<16>().0.try_into().unwrap();
            // w[i] = W_4i..W_4i+3; the ring holds the last 5 vectors.
            let mut w = [
                load_be(&b[0]),
                load_be(&b[1]),
                load_be(&b[2]),
                load_be(&b[3]),
            ];
            let mut next = expand(w[0], w[1], w[2], w[3]); // W16..W19
            for g in 0..16 {
                let cur = w[0];
                let nxt = w[1];
                let wp = veorq_u32(cur, nxt);
                let j = 4 * g;
                if g < 4 {
                    four!(abcd, efgh, j, cur, wp, tt1a, tt2a);
                } else {
                    four!(abcd, efgh, j, cur, wp, tt1b, tt2b);
                }
                // Slide the window: w = W_j+4..W_j+19, then expand the next.
                w = [w[1], w[2], w[3], next];
                // Vector g + 5 (W_4g+20..); W_64..W_67 (vector 16) is the last needed.
                if g < 12 {
                    next = expand(w[0], w[1], w[2], w[3]);
                }
            }
            abcd = veorq_u32(abcd, abcd0);
            efgh = veorq_u32(efgh, efgh0);
        }
        // SAFETY: `state` is 8 writable u32.
        unsafe {
            vst1q_u32(state.as_mut_ptr(), rev_lanes(abcd));
            vst1q_u32(state.as_mut_ptr().add(4), rev_lanes(efgh));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm3;
    use crate::sm4::Sm4;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn fill(&mut self, b: &mut [u8]) {
            for c in b.chunks_mut(8) {
                let r = self.next().to_le_bytes();
                c.copy_from_slice(&r[..c.len()]);
            }
        }
        fn block(&mut self) -> [u8; 16] {
            let mut b = [0u8; 16];
            self.fill(&mut b);
            b
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const KERNELS: [Impl; 2] = [Impl::Sm4Ce, Impl::Neon];

    /// The kernels this CPU runs; prints `skipped: <reason>` for the others.
    fn runnable() -> Vec<Impl> {
        KERNELS
            .into_iter()
            .filter(|&imp| match sm4_unavailable(imp) {
                None => true,
                Some(why) => {
                    println!("skipped: {imp}: {why}");
                    false
                }
            })
            .collect()
    }

    fn sm3_runnable() -> bool {
        match sm3_unavailable() {
            None => true,
            Some(why) => {
                println!("skipped: sm3-ce: {why}");
                false
            }
        }
    }

    #[test]
    fn unavailable_matches_dispatch() {
        for imp in Impl::ALL {
            let why = sm4_unavailable(imp);
            let mut b = [[0x5au8; 16]; 5];
            let ran = sm4_blocks(imp, &[7; 32], &mut b);
            let rks = [[7u32; 32]; 5];
            let mut bk = [[0x5au8; 16]; 5];
            let ran_keyed = sm4_blocks_keyed(imp, &rks, &mut bk);
            assert_eq!(ran, why.is_none(), "{imp}");
            assert_eq!(ran_keyed, why.is_none(), "{imp}");
            if !ran {
                assert_eq!(b, [[0x5au8; 16]; 5], "{imp} touched the blocks");
                assert_eq!(bk, [[0x5au8; 16]; 5], "{imp} touched the blocks");
            }
            if KERNELS.contains(&imp) {
                println!("{imp}: {}", why.unwrap_or("available"));
            }
        }
        assert_eq!(sm4_unavailable(Impl::GfniAvx2), Some("x86_64 only"));
        let mut st = [1u32; 8];
        assert_eq!(
            sm3_compress(&mut st, &[[0; 64]]),
            sm3_unavailable().is_none()
        );
        if sm3_unavailable().is_some() {
            assert_eq!(st, [1u32; 8]);
        }
        println!("sm3-ce: {}", sm3_unavailable().unwrap_or("available"));
    }

    #[test]
    fn sm4_standard_vector() {
        let key: [u8; 16] = hex("0123456789abcdeffedcba9876543210").try_into().unwrap();
        let ct: [u8; 16] = hex("681edf34d206965e86b3e94f536e4246").try_into().unwrap();
        for imp in runnable() {
            let c = Sm4::with_impl(&key, imp).unwrap();
            for n in [1usize, 3, 4, 5, 8, 9, 17] {
                let mut b = vec![key; n];
                c.encrypt_blocks(&mut b);
                assert!(b.iter().all(|x| *x == ct), "{imp} n={n}");
                c.decrypt_blocks(&mut b);
                assert!(b.iter().all(|x| *x == key), "{imp} n={n}");
            }
            println!("{imp}: GB/T 32907 vector ok");
        }
    }

    #[test]
    fn sm4_random_vs_portable() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for imp in runnable() {
            for n in 0..=40usize {
                for _ in 0..3 {
                    let key = rng.block();
                    let port = Sm4::with_impl(&key, Impl::Portable).unwrap();
                    let simd = Sm4::with_impl(&key, imp).unwrap();
                    let pt: Vec<[u8; 16]> = (0..n).map(|_| rng.block()).collect();
                    let mut want = pt.clone();
                    port.encrypt_blocks(&mut want);
                    let mut got = pt.clone();
                    simd.encrypt_blocks(&mut got);
                    assert_eq!(got, want, "{imp} encrypt n={n}");
                    simd.decrypt_blocks(&mut got);
                    assert_eq!(got, pt, "{imp} decrypt n={n}");
                    // Directly, in both directions.
                    let rk = crate::sm4::expand_key(&key);
                    let mut got = pt.clone();
                    assert!(sm4_blocks(imp, &rk, &mut got));
                    assert_eq!(got, want, "{imp} direct n={n}");
                    let mut dk = rk;
                    dk.reverse();
                    assert!(sm4_blocks(imp, &dk, &mut got));
                    assert_eq!(got, pt, "{imp} direct decrypt n={n}");
                    for (g, p) in want.iter().zip(&pt) {
                        let mut one = *p;
                        port.encrypt_block(&mut one);
                        assert_eq!(one, *g);
                    }
                }
            }
            println!("{imp}: 0..=40 blocks match portable");
        }
    }

    #[test]
    fn sm4_keyed_vs_portable() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for imp in runnable() {
            for n in 0..=40usize {
                let keys: Vec<[u8; 16]> = (0..n).map(|_| rng.block()).collect();
                let rks: Vec<[u32; 32]> = keys.iter().map(crate::sm4::expand_key).collect();
                let pt: Vec<[u8; 16]> = (0..n).map(|_| rng.block()).collect();
                let want: Vec<[u8; 16]> = keys
                    .iter()
                    .zip(&pt)
                    .map(|(k, p)| {
                        let mut b = [*p];
                        Sm4::with_impl(k, Impl::Portable)
                            .unwrap()
                            .encrypt_blocks(&mut b);
                        b[0]
                    })
                    .collect();
                let mut got = pt.clone();
                assert!(sm4_blocks_keyed(imp, &rks, &mut got));
                assert_eq!(got, want, "{imp} keyed n={n}");
                let dks: Vec<[u32; 32]> = rks
                    .iter()
                    .map(|r| {
                        let mut d = *r;
                        d.reverse();
                        d
                    })
                    .collect();
                assert!(sm4_blocks_keyed(imp, &dks, &mut got));
                assert_eq!(got, pt, "{imp} keyed decrypt n={n}");
            }
            // Through the public API: OFB lanes under different keys.
            let keys: Vec<Sm4> = (0..11)
                .map(|_| Sm4::with_impl(&rng.block(), imp).unwrap())
                .collect();
            let ivs: Vec<[u8; 16]> = (0..11).map(|_| rng.block()).collect();
            let mut data: Vec<Vec<u8>> = (0..11)
                .map(|i| {
                    let mut d = vec![0u8; 7 + 29 * i];
                    rng.fill(&mut d);
                    d
                })
                .collect();
            let want: Vec<Vec<u8>> = data
                .iter()
                .zip(&keys)
                .zip(&ivs)
                .map(|((d, k), iv)| {
                    let mut d = d.clone();
                    k.ofb_apply(iv, &mut d);
                    d
                })
                .collect();
            let mut units: Vec<crate::sm4::OfbUnit<'_>> = data
                .iter_mut()
                .zip(&ivs)
                .map(|(d, iv)| crate::sm4::OfbUnit { iv: *iv, data: d })
                .collect();
            let krefs: Vec<&Sm4> = keys.iter().collect();
            crate::sm4::ofb_lanes_keyed(&krefs, &mut units);
            drop(units);
            assert_eq!(data, want, "{imp} ofb_lanes_keyed");
            println!("{imp}: keyed 0..=40 blocks match portable");
        }
    }

    fn digest(imp: sm3::Impl, msg: &[u8]) -> Vec<u8> {
        let mut h = sm3::Sm3::with_impl(imp);
        assert_eq!(h.implementation(), imp);
        h.update(msg);
        h.finalize().to_vec()
    }

    #[test]
    fn sm3_standard_vectors() {
        if !sm3_runnable() {
            return;
        }
        let abc = hex("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0");
        assert_eq!(digest(sm3::Impl::Sm3Ce, b"abc"), abc);
        let abcd = hex("debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732");
        assert_eq!(digest(sm3::Impl::Sm3Ce, &b"abcd".repeat(16)), abcd);
        println!("sm3-ce: GB/T 32905 vectors ok");
    }

    #[test]
    fn sm3_random_vs_portable() {
        if !sm3_runnable() {
            return;
        }
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for n in 0..=20usize {
            let mut blocks = vec![[0u8; 64]; n];
            for b in blocks.iter_mut() {
                rng.fill(b);
            }
            let mut st0 = [0u32; 8];
            for s in st0.iter_mut() {
                *s = rng.next() as u32;
            }
            let mut want = st0;
            sm3::compress(sm3::Impl::Portable, &mut want, &blocks);
            let mut got = st0;
            assert!(sm3_compress(&mut got, &blocks));
            assert_eq!(got, want, "n={n}");
            let mut got = st0;
            sm3::compress(sm3::Impl::Sm3Ce, &mut got, &blocks);
            assert_eq!(got, want, "n={n} via sm3::compress");
        }
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4097] {
            let mut m = vec![0u8; len];
            rng.fill(&mut m);
            assert_eq!(
                digest(sm3::Impl::Sm3Ce, &m),
                digest(sm3::Impl::Portable, &m),
                "len={len}"
            );
        }
        println!("sm3-ce: random blocks match portable");
    }

    /// EMULATED or native throughput: `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench() {
        use std::time::{Duration, Instant};
        const BYTES: usize = 64 * 1024;
        let budget = Duration::from_millis(
            std::env::var("GMCRYPT_BENCH_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2000),
        );
        let mbps = |f: &mut dyn FnMut()| {
            f();
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < budget {
                f();
                n += 1;
            }
            (n * BYTES as u64) as f64 / start.elapsed().as_secs_f64() / 1e6
        };
        let key = [0x42u8; 16];
        let mut buf = vec![[0u8; 16]; BYTES / 16];
        for imp in [Impl::Portable, Impl::Neon, Impl::Sm4Ce] {
            match Sm4::with_impl(&key, imp) {
                Ok(c) => {
                    let r = mbps(&mut || c.encrypt_blocks(&mut buf));
                    println!("bench sm4 {:<9} {r:9.1} MB/s (ECB, 64 KiB)", imp.name());
                }
                Err(e) => println!("skipped: {e}"),
            }
        }
        let blocks = vec![[0x61u8; 64]; BYTES / 64];
        for imp in [sm3::Impl::Portable, sm3::Impl::Sm3Ce] {
            if let Some(why) = imp.unavailable() {
                println!("skipped: sm3 {imp}: {why}");
                continue;
            }
            let mut st = [0u32; 8];
            let r = mbps(&mut || sm3::compress(imp, &mut st, &blocks));
            println!(
                "bench sm3 {:<9} {r:9.1} MB/s (compress, 64 KiB)",
                imp.name()
            );
        }
    }
}
