//! The portable SM3 compression: 64 rounds unrolled in steps of 4 with the
//! message expansion (W_j, W'_j) computed in a 16-word ring as it goes.

#[inline(always)]
fn p0(x: u32) -> u32 {
    x ^ x.rotate_left(9) ^ x.rotate_left(17)
}

#[inline(always)]
fn p1(x: u32) -> u32 {
    x ^ x.rotate_left(15) ^ x.rotate_left(23)
}

use super::TJ;

macro_rules! round {
    ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident,
     $j:expr, $wj:expr, $wj4:expr, $ff:expr, $gg:expr) => {{
        let a12 = $a.rotate_left(12);
        let ss1 = a12.wrapping_add($e).wrapping_add(TJ[$j]).rotate_left(7);
        let ss2 = ss1 ^ a12;
        let tt1 = $ff($a, $b, $c)
            .wrapping_add($d)
            .wrapping_add(ss2)
            .wrapping_add($wj ^ $wj4);
        let tt2 = $gg($e, $f, $g)
            .wrapping_add($h)
            .wrapping_add(ss1)
            .wrapping_add($wj);
        $d = tt1;
        $b = $b.rotate_left(9);
        $h = p0(tt2);
        $f = $f.rotate_left(19);
    }};
}

#[inline(always)]
fn ff0(x: u32, y: u32, z: u32) -> u32 {
    x ^ y ^ z
}
#[inline(always)]
fn ff1(x: u32, y: u32, z: u32) -> u32 {
    (x & y) | ((x | y) & z)
}
#[inline(always)]
fn gg1(x: u32, y: u32, z: u32) -> u32 {
    ((y ^ z) & x) ^ z
}

/// Compresses whole 64-byte blocks into `state`.
pub(super) fn compress(state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    for block in blocks {
        let mut w = [0u32; 68];
        for (wi, c) in w.iter_mut().zip(block.as_chunks::<4>().0) {
            *wi = u32::from_be_bytes(*c);
        }
        for j in 16..68 {
            w[j] = p1(w[j - 16] ^ w[j - 9] ^ w[j - 3].rotate_left(15))
                ^ w[j - 13].rotate_left(7)
                ^ w[j - 6];
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        // Each round writes its new A into D's slot and its new E into H's
        // slot; renaming the registers each round (a,b,c,d) -> (d,a,b,c)
        // avoids the moves.
        macro_rules! four {
            ($j:literal, $ff:expr, $gg:expr) => {
                round!(a, b, c, d, e, f, g, h, $j, w[$j], w[$j + 4], $ff, $gg);
                round!(
                    d,
                    a,
                    b,
                    c,
                    h,
                    e,
                    f,
                    g,
                    $j + 1,
                    w[$j + 1],
                    w[$j + 5],
                    $ff,
                    $gg
                );
                round!(
                    c,
                    d,
                    a,
                    b,
                    g,
                    h,
                    e,
                    f,
                    $j + 2,
                    w[$j + 2],
                    w[$j + 6],
                    $ff,
                    $gg
                );
                round!(
                    b,
                    c,
                    d,
                    a,
                    f,
                    g,
                    h,
                    e,
                    $j + 3,
                    w[$j + 3],
                    w[$j + 7],
                    $ff,
                    $gg
                );
            };
        }
        // Literal indices: no bounds checks, constants folded.
        four!(0, ff0, ff0);
        four!(4, ff0, ff0);
        four!(8, ff0, ff0);
        four!(12, ff0, ff0);
        four!(16, ff1, gg1);
        four!(20, ff1, gg1);
        four!(24, ff1, gg1);
        four!(28, ff1, gg1);
        four!(32, ff1, gg1);
        four!(36, ff1, gg1);
        four!(40, ff1, gg1);
        four!(44, ff1, gg1);
        four!(48, ff1, gg1);
        four!(52, ff1, gg1);
        four!(56, ff1, gg1);
        four!(60, ff1, gg1);
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s ^= v;
        }
    }
}
