//! x86_64 multi-buffer SM3: one message per 32-bit lane, 16 messages per
//! call on AVX-512 (`vprold` rotates, `vpternlogd` for the boolean
//! functions and three-way XORs), 8 on AVX2. The compression function is
//! the standard one (GB/T 32905 5.3) with every word a vector of lanes.

use core::arch::x86_64::*;

use crate::sm3::TJ;

/// The body of the compression over vectors: `$v` the vector type and the
/// operations as macros, so AVX-512 and AVX2 share it.
macro_rules! sm3_body {
    ($state:ident, $w_in:ident, $load:ident, $store:ident, $add:ident, $xor3:ident,
     $rol:ident, $set1:ident, $ff1:ident, $gg1:ident) => {{
        let mut w = [$set1!(0); 68];
        for j in 0..16 {
            w[j] = $load!(&$w_in[j]);
        }
        for j in 16..68 {
            let x = $xor3!(w[j - 16], w[j - 9], $rol!(w[j - 3], 15));
            let p1 = $xor3!(x, $rol!(x, 15), $rol!(x, 23));
            w[j] = $xor3!(p1, $rol!(w[j - 13], 7), w[j - 6]);
        }
        let mut a = $load!(&$state[0]);
        let mut b = $load!(&$state[1]);
        let mut c = $load!(&$state[2]);
        let mut d = $load!(&$state[3]);
        let mut e = $load!(&$state[4]);
        let mut f = $load!(&$state[5]);
        let mut g = $load!(&$state[6]);
        let mut h = $load!(&$state[7]);
        let (a0, b0, c0, d0, e0, f0, g0, h0) = (a, b, c, d, e, f, g, h);
        macro_rules! round {
            ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $j:expr, $lo:expr) => {{
                let a12 = $rol!($a, 12);
                let ss1 = $rol!($add!($add!(a12, $e), $set1!(TJ[$j] as i32)), 7);
                let ss2 = xor2!(ss1, a12);
                let (ff, gg) = if $lo {
                    ($xor3!($a, $b, $c), $xor3!($e, $f, $g))
                } else {
                    ($ff1!($a, $b, $c), $gg1!($e, $f, $g))
                };
                let tt1 = $add!($add!(ff, $d), $add!(ss2, xor2!(w[$j], w[$j + 4])));
                let tt2 = $add!($add!(gg, $h), $add!(ss1, w[$j]));
                $d = tt1;
                $b = $rol!($b, 9);
                $h = $xor3!(tt2, $rol!(tt2, 9), $rol!(tt2, 17));
                $f = $rol!($f, 19);
            }};
        }
        macro_rules! four {
            ($j:literal, $lo:expr) => {
                round!(a, b, c, d, e, f, g, h, $j, $lo);
                round!(d, a, b, c, h, e, f, g, $j + 1, $lo);
                round!(c, d, a, b, g, h, e, f, $j + 2, $lo);
                round!(b, c, d, a, f, g, h, e, $j + 3, $lo);
            };
        }
        four!(0, true);
        four!(4, true);
        four!(8, true);
        four!(12, true);
        four!(16, false);
        four!(20, false);
        four!(24, false);
        four!(28, false);
        four!(32, false);
        four!(36, false);
        four!(40, false);
        four!(44, false);
        four!(48, false);
        four!(52, false);
        four!(56, false);
        four!(60, false);
        $store!(&mut $state[0], xor2!(a, a0));
        $store!(&mut $state[1], xor2!(b, b0));
        $store!(&mut $state[2], xor2!(c, c0));
        $store!(&mut $state[3], xor2!(d, d0));
        $store!(&mut $state[4], xor2!(e, e0));
        $store!(&mut $state[5], xor2!(f, f0));
        $store!(&mut $state[6], xor2!(g, g0));
        $store!(&mut $state[7], xor2!(h, h0));
    }};
}

/// 16 lanes: `state[i][l]` is word i of lane l, `w[j][l]` word j of lane
/// l's block (already big-endian decoded).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f")]
unsafe fn x16(state: &mut [[u32; 16]; 8], w_in: &[[u32; 16]; 16]) {
    // SAFETY (ld/st): each array is 64 bytes; this function runs with avx512f.
    macro_rules! ld {
        ($p:expr) => {
            unsafe { _mm512_loadu_si512($p.as_ptr().cast()) }
        };
    }
    macro_rules! st {
        ($p:expr, $v:expr) => {
            unsafe { _mm512_storeu_si512($p.as_mut_ptr().cast(), $v) }
        };
    }
    macro_rules! rol {
        ($x:expr, $n:literal) => {
            _mm512_rol_epi32::<$n>($x)
        };
    }
    macro_rules! add {
        ($x:expr, $y:expr) => {
            _mm512_add_epi32($x, $y)
        };
    }
    macro_rules! xor2 {
        ($x:expr, $y:expr) => {
            _mm512_xor_si512($x, $y)
        };
    }
    macro_rules! xor3 {
        ($x:expr, $y:expr, $z:expr) => {
            _mm512_ternarylogic_epi32::<0x96>($x, $y, $z)
        };
    }
    macro_rules! set1 {
        ($x:expr) => {
            _mm512_set1_epi32($x)
        };
    }
    // Majority (x&y | x&z | y&z) and choose (x ? y : z).
    macro_rules! ff1 {
        ($x:expr, $y:expr, $z:expr) => {
            _mm512_ternarylogic_epi32::<0xe8>($x, $y, $z)
        };
    }
    macro_rules! gg1 {
        ($x:expr, $y:expr, $z:expr) => {
            _mm512_ternarylogic_epi32::<0xca>($x, $y, $z)
        };
    }
    sm3_body!(state, w_in, ld, st, add, xor3, rol, set1, ff1, gg1);
}

/// 8 lanes, as [`x16`].
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn x8(state: &mut [[u32; 8]; 8], w_in: &[[u32; 8]; 16]) {
    // SAFETY (ld/st): each array is 32 bytes; this function runs with avx2.
    macro_rules! ld {
        ($p:expr) => {
            unsafe { _mm256_loadu_si256($p.as_ptr().cast()) }
        };
    }
    macro_rules! st {
        ($p:expr, $v:expr) => {
            unsafe { _mm256_storeu_si256($p.as_mut_ptr().cast(), $v) }
        };
    }
    macro_rules! rol {
        ($x:expr, $n:literal) => {{
            let x = $x;
            _mm256_or_si256(
                _mm256_slli_epi32::<$n>(x),
                _mm256_srli_epi32::<{ 32 - $n }>(x),
            )
        }};
    }
    macro_rules! add {
        ($x:expr, $y:expr) => {
            _mm256_add_epi32($x, $y)
        };
    }
    macro_rules! xor2 {
        ($x:expr, $y:expr) => {
            _mm256_xor_si256($x, $y)
        };
    }
    macro_rules! xor3 {
        ($x:expr, $y:expr, $z:expr) => {
            _mm256_xor_si256(_mm256_xor_si256($x, $y), $z)
        };
    }
    macro_rules! set1 {
        ($x:expr) => {
            _mm256_set1_epi32($x)
        };
    }
    macro_rules! ff1 {
        ($x:expr, $y:expr, $z:expr) => {{
            let (x, y) = ($x, $y);
            _mm256_or_si256(
                _mm256_and_si256(x, y),
                _mm256_and_si256(_mm256_or_si256(x, y), $z),
            )
        }};
    }
    macro_rules! gg1 {
        ($x:expr, $y:expr, $z:expr) => {{
            let z = $z;
            _mm256_xor_si256(_mm256_and_si256(_mm256_xor_si256($y, z), $x), z)
        }};
    }
    sm3_body!(state, w_in, ld, st, add, xor3, rol, set1, ff1, gg1);
}

/// Lanes per call this CPU gives (16, 8), or None.
pub(super) fn lanes() -> Option<usize> {
    if is_x86_feature_detected!("avx512f") {
        Some(16)
    } else if is_x86_feature_detected!("avx2") {
        Some(8)
    } else {
        None
    }
}

/// One block per lane, 16 lanes; false if the CPU lacks AVX-512 F.
pub(super) fn compress_x16(state: &mut [[u32; 16]; 8], w: &[[u32; 16]; 16]) -> bool {
    if !is_x86_feature_detected!("avx512f") {
        return false;
    }
    // SAFETY: avx512f detected just above.
    unsafe { x16(state, w) };
    true
}

/// One block per lane, 8 lanes; false if the CPU lacks AVX2.
pub(super) fn compress_x8(state: &mut [[u32; 8]; 8], w: &[[u32; 8]; 16]) -> bool {
    if !is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: avx2 detected just above.
    unsafe { x8(state, w) };
    true
}
